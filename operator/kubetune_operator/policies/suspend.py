"""spec.suspend: the children stay, the workers scale to zero; like a Kubernetes Job, the deadline
clock restarts when the job resumes (activate.py says Resumed)."""

from __future__ import annotations

from kubetune_operator.pods import is_running
from kubetune_operator.policies.draft import SUSPENDED, Draft, Event


def suspend(d: Draft) -> bool:
    if not d.spec.suspend:
        return False
    if not d.created:
        d.cond("Created", True, "ChildrenCreated", "children created with no workers (suspended)")
    d.decision.apply_children, d.decision.replicas = True, 0
    d.cond("Suspended", True, "Suspended", "spec.suspend is true; workers scaled to zero")
    d.cond("Running", False, "Suspended", "suspended")
    d.phase(SUSPENDED, "Suspended", "spec.suspend is true; workers scaled to zero")
    d.new.pop("startTime", None)
    d.workers([p for p in d.live if is_running(p)], 0)
    if d.old_phase != SUSPENDED:
        d.decision.events.append(Event("Normal", "Suspended", "suspended; workers scaled to zero"))
    return True
