"""A job that has succeeded or failed keeps its status: it only keeps its workers at zero and waits
for its TTL (a restarted worker of a finished job must not bring it back)."""

from __future__ import annotations

from kubetune_operator.policies.draft import FINAL, Draft
from kubetune_operator.policies.outcomes import schedule_ttl


def keep_finished(d: Draft) -> bool:
    if d.old_phase not in FINAL:
        return False
    d.new["observedGeneration"] = d.old.get("observedGeneration", d.generation)
    d.decision.scale_to_zero = d.created and bool(d.live)
    schedule_ttl(d)
    return True
