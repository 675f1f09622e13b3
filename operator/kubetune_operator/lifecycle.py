"""The FineTuneJob lifecycle state machine: what the job's status should say, and what to do, given
what is observed.

`decide(Observed) -> Decision` is the whole state machine; the reconciler only gathers the
observation and carries out the decision. Deciding from observations (pods, progress, the previous
status) rather than from remembered events is what makes a restarted operator pick up exactly where
the last one stopped.

Phases: Pending -> (Fetching ->) Running -> Succeeded | Failed, and Suspended while spec.suspend is
true. Succeeded and Failed are final. Each concern is a policy of its own (policies/); this module
only fixes their order, which is part of the behaviour: a finished job stays finished whatever its
pods do; an invalid spec fails before anything is built; a suspended job is not timed; a completed
training ignores the deadline and the other workers' exits; a failure is looked at before the
workers' count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubetune_operator.policies.activate import activate
from kubetune_operator.policies.backoff import handle_failure
from kubetune_operator.policies.completion import complete
from kubetune_operator.policies.config_wait import wait_for_config
from kubetune_operator.policies.deadline import enforce_deadline
from kubetune_operator.policies.draft import FINAL, OWNED_KEYS, Decision, Draft, Event, Observed, condition
from kubetune_operator.policies.finished import keep_finished
from kubetune_operator.policies.invalid import fail_invalid
from kubetune_operator.policies.reports import carry_reports
from kubetune_operator.policies.suspend import suspend
from kubetune_operator.policies.workers import report_workers

__all__ = ["FINAL", "Decision", "Observed", "condition", "decide", "owned_status", "status_patch"]

Policy = Callable[[Draft], bool]

# In this order; the first that returns True settles the reconcile.
POLICIES: tuple[Policy, ...] = (
    keep_finished,
    carry_reports,
    fail_invalid,
    suspend,
    wait_for_config,
    activate,
    complete,
    enforce_deadline,
    handle_failure,
    report_workers,
)


def decide(obs: Observed) -> Decision:
    """The new status and the actions that get the cluster there; every phase change gets an Event."""
    draft = Draft(obs)
    for policy in POLICIES:
        if policy(draft):
            break
    decision = draft.decision
    new_phase = decision.status.get("phase")
    if new_phase != draft.old_phase and not decision.events:
        decision.events.append(Event("Normal", new_phase or "Unknown", decision.status.get("message", "")))
    return decision


def owned_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator-owned part of a status, to compare with a decision's (and skip writes that change nothing)."""
    status = status or {}
    return {k: status[k] for k in OWNED_KEYS if k in status}


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning the old owned status into the new one (None when nothing changes)."""
    before = owned_status(old)
    if before == new:
        return None
    patch: dict[str, Any] = {k: v for k, v in new.items() if before.get(k) != v}
    for key in before:
        if key not in new:
            patch[key] = None  # merge patch: null removes the key
    return patch
