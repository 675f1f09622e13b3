"""The pods' reports carried into the status: rank 0's progress and tracker runs, the fetch step's
progress. Only the contract's fields, re-checked (progress.py): whatever else a pod wrote never
reaches the status. A report not read this time keeps the one already in the status."""

from __future__ import annotations

from kubetune_operator import progress as progress_report
from kubetune_operator.pods import MESSAGE_LIMIT
from kubetune_operator.policies.draft import Draft, Event


def carry_reports(d: Draft) -> bool:
    obs = d.obs
    progress = progress_report.sanitize(obs.progress if obs.progress is not None else d.old.get("progress"))
    _put(d, "progress", progress)
    _tracking(d)
    fetch = progress_report.sanitize_fetch(obs.fetch if obs.fetch is not None else d.old.get("fetch"))
    _put(d, "fetch", fetch)
    return False  # reports never settle the job on their own


def _put(d: Draft, key: str, value: object) -> None:
    if value:
        d.new[key] = value
    else:
        d.new.pop(key, None)


def _tracking(d: Draft) -> None:
    """status.tracking: the tracker runs rank 0 named; an event when they first appear or change
    (a resumed run names the same runs: no new event)."""
    tracking = progress_report.sanitize_tracking(
        d.obs.tracking if d.obs.tracking is not None else d.old.get("tracking")
    )
    _put(d, "tracking", tracking)
    if tracking and tracking != d.old.get("tracking"):
        message = progress_report.tracking_summary(tracking)[:MESSAGE_LIMIT]
        d.decision.events.append(Event("Normal", "TrackerRuns", message))
