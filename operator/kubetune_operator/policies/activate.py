"""An active job: its children exist (or are about to) with every worker scheduled, its deadline
clock runs from startTime, and it is not finished. Never settles the job: the policies after it say
how the run is going."""

from __future__ import annotations

from kubetune_operator.pods import rfc3339
from kubetune_operator.policies.draft import SUSPENDED, Draft, Event
from kubetune_operator.spec import shares_one_node_claim


def activate(d: Draft) -> bool:
    spec = d.spec
    d.decision.apply_children, d.decision.replicas = True, spec.workers
    if not d.created:
        d.cond(
            "Created",
            True,
            "ChildrenCreated",
            f"ConfigMap, Service and StatefulSet of {spec.workers} worker(s)",
        )
        d.decision.events.append(
            Event("Normal", "Created", f"created the children for {spec.workers} worker(s)")
        )
        if shares_one_node_claim(spec):
            message = (
                f"{spec.workers} workers share one ReadWriteOnce claim: they can all mount it only on one "
                "node; for workers on several nodes use accessModes [ReadWriteMany]"
            )
            d.decision.events.append(Event("Warning", "SharedReadWriteOnce", message))
    if d.old_phase == SUSPENDED:
        d.decision.events.append(
            Event("Normal", "Resumed", "resumed; training continues from the last checkpoint")
        )
    d.cond("Suspended", False, "Active")
    if not d.new.get("startTime"):
        d.new["startTime"] = rfc3339(d.obs.now)
    d.new.pop("completionTime", None)
    return False
