-- ArgoCD health check for kubetune.dev/FineTuneJob (Lua 5.1, as ArgoCD runs it).
--
-- Install it under resource.customizations in argocd-cm (see helm/kubetune/README.md):
--   resource.customizations.health.kubetune.dev_FineTuneJob: |
--     <this file>
--
-- status.phase drives the result: Succeeded -> Healthy, Failed -> Degraded,
-- Suspended -> Suspended, anything else -> Progressing. A status the operator wrote for an
-- older generation of the spec says nothing about the current one, so it reads as Progressing
-- until the operator catches up (status.observedGeneration < metadata.generation).

local function nonempty(s)
  return s ~= nil and s ~= ""
end

-- The operator's own summary of the phase: "<reason>: <message>", then the matching condition's.
local function describe(status, condition_type, fallback)
  local reason, message = status.reason, status.message
  if not nonempty(message) and status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == condition_type and c.status == "True" then
        reason, message = c.reason, c.message
      end
    end
  end
  if nonempty(reason) and nonempty(message) then
    return reason .. ": " .. message
  end
  if nonempty(message) then
    return message
  end
  if nonempty(reason) then
    return reason
  end
  return fallback
end

local function progress(status)
  local p = status.progress
  if p == nil or p.step == nil then
    return nil
  end
  local text = "step " .. tostring(p.step)
  if p.totalSteps ~= nil then
    text = text .. "/" .. tostring(p.totalSteps)
  end
  if type(p.loss) == "number" then
    text = text .. ", loss " .. string.format("%.4g", p.loss)
  end
  return text
end

local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(status, "Succeeded", "training finished")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(status, "Failed", "training failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  local text = describe(status, "Suspended", "suspended")
  local at = progress(status)
  if at ~= nil then
    text = text .. " (at " .. at .. ")"
  end
  hs.message = text
else
  hs.status = "Progressing"
  hs.message = progress(status) or describe(status, phase, phase)
end
return hs
