"""The training pods' security contexts: the restricted Pod Security Standard by default.

https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted: a non-root user,
seccomp RuntimeDefault, no privilege escalation, every capability dropped. A job may tighten these
(spec.podSecurityContext, spec.securityContext: their models cannot express a loosening), never
loosen them, so a namespace enforcing `restricted` admits every worker the operator creates.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator.spec import FineTuneJobSpec, SeccompProfile

# The runtime image runs as this user and group (images/runtime/Containerfile: USER 1000:1000); volumes
# are given to its group (fsGroup) so the trainer can write its outputs and caches.
RUNTIME_UID = 1000
RUNTIME_GID = 1000
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}
# With a read-only root filesystem the runtime (and torch, triton, the HF libraries) still need a
# writable scratch directory and home: an emptyDir at /tmp, HOME pointing there.
SCRATCH_VOLUME = "kubetune-tmp"
SCRATCH_DIR = "/tmp"


def _seccomp(profile: SeccompProfile | None) -> dict[str, Any]:
    return profile.model_dump(exclude_none=True) if profile is not None else dict(RUNTIME_DEFAULT)


def pod_security_context(spec: FineTuneJobSpec) -> dict[str, Any]:
    wanted = spec.podSecurityContext
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_GID,
        "fsGroup": RUNTIME_GID,
        "seccompProfile": dict(RUNTIME_DEFAULT),
    }
    if wanted is None:
        return context
    chosen = wanted.model_dump(exclude_none=True, exclude={"seccompProfile"})
    if not chosen.get("supplementalGroups"):
        chosen.pop("supplementalGroups", None)
    context.update(chosen)
    context["seccompProfile"] = _seccomp(wanted.seccompProfile)
    return context


def container_security_context(spec: FineTuneJobSpec) -> dict[str, Any]:
    wanted = spec.securityContext
    drop = ["ALL"]
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": drop},
    }
    if wanted is None:
        return context
    if wanted.capabilities is not None:
        drop += [name for name in wanted.capabilities.drop if name != "ALL" and name not in drop]
    context.update(wanted.model_dump(exclude_none=True, exclude={"capabilities", "seccompProfile"}))
    if wanted.seccompProfile is not None:
        context["seccompProfile"] = _seccomp(wanted.seccompProfile)
    return context


def read_only_root(spec: FineTuneJobSpec) -> bool:
    return bool(spec.securityContext is not None and spec.securityContext.readOnlyRootFilesystem)
