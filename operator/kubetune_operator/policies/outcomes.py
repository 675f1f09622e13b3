"""The two final transitions several policies end in (success, failure), and the TTL they start."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kubetune.config.redaction import without_credentials

from kubetune_operator import progress as progress_report
from kubetune_operator.pods import parse_time, rfc3339
from kubetune_operator.policies.draft import FAILED, SUCCEEDED, Draft, Event


def succeed(d: Draft, summary: dict, note: str = "") -> None:
    obs = d.obs
    outputs = dict(obs.outputs or {})  # the operator's own record of where the run writes
    if summary:
        outputs["summary"] = summary
    uploaded = uploaded_to(summary)
    if uploaded:
        outputs["uri"] = uploaded
    d.new["outputs"] = outputs
    d.new["progress"] = progress_report.final(d.progress, summary)
    d.new["completionTime"] = rfc3339(obs.now)
    message = f"training finished; outputs in {outputs.get('outputDir', 'the outputs volume')}"
    if uploaded:
        message = f"{message}, uploaded to {uploaded}"
    if note:
        message = f"{message} ({note})"
    d.cond("Running", False, "Completed", message)
    d.cond("Succeeded", True, "Completed", message)
    d.phase(SUCCEEDED, "Completed", message)
    d.workers([], 0)
    d.decision.apply_children, d.decision.replicas = False, 0
    d.decision.scale_to_zero = True
    d.decision.events.append(Event("Normal", "Succeeded", message))
    schedule_ttl(d)


def fail(d: Draft, reason: str, message: str, scale_to_zero: bool) -> None:
    d.new["completionTime"] = rfc3339(d.obs.now)
    d.cond("Running", False, reason, message)
    d.cond("Failed", True, reason, message)
    d.phase(FAILED, reason, message)
    d.workers([], 0)
    d.decision.apply_children = False
    d.decision.scale_to_zero = scale_to_zero
    d.decision.events.append(Event("Warning", reason, message))
    schedule_ttl(d)


def schedule_ttl(d: Draft) -> None:
    """runPolicy.ttlSecondsAfterFinished: delete the finished job when it is up, or wake then."""
    ttl = d.obs.spec.runPolicy.ttlSecondsAfterFinished if d.obs.spec is not None else None
    finished = parse_time(d.new.get("completionTime"))
    if ttl is None or finished is None:
        return
    left = (finished + timedelta(seconds=ttl) - d.obs.now).total_seconds()
    if left <= 0:
        d.decision.delete_job = True
    else:
        d.decision.wake_in(left)


def uploaded_to(summary: Mapping[str, Any] | None) -> str | None:
    """The object-store prefix rank 0 uploaded the result to (output_uri), cleaned: the pod wrote it."""
    record = (summary or {}).get("output_uri")
    uri = record.get("uri") if isinstance(record, Mapping) else None
    if not isinstance(uri, str):
        return None
    return without_credentials(uri)[:2048] or None
