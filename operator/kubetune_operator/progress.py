"""status.progress: read from the ConfigMap rank 0 writes, re-derived by the operator.

The pods may write one object: their job's `<job>-progress` ConfigMap (key `progress.json`, the
runtime's kubetune.train.progress). Code in a pod (remote model code, a custom data format) is not
trusted with anything else: the operator copies only the fields of the progress contract, each
checked for its type, into status.progress, and derives the Progress column's percent itself. So a
pod that writes `phase: Succeeded` or `restarts: 0` changes nothing the operator decides from.

status.tracking comes the same way, from the key `tracking.json` (the runtime's
kubetune.train.tracking.describe): a list of the experiment tracker runs, each an object of short
strings. It is cleaned like a report: known kinds and fields only, strings of bounded length, at
most TRACKING_ENTRIES, links only over http(s), and URIs stripped of credentials again (the runtime
strips them first; a pod is not trusted to have done so).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.config.redaction import without_credentials

PROGRESS_KEY = "progress.json"
# A report is a few hundred bytes; anything larger is not a progress report.
MAX_REPORT_BYTES = 16_384
TEXT_LIMIT = 1024

_INTEGERS = ("step", "totalSteps", "trainedTokens", "resumedFromStep")
_NUMBERS = ("epoch", "loss", "learningRate", "tokensPerSecond", "etaSeconds")
_TEXTS = ("lastCheckpoint", "outputDir", "updatedAt")
# status.progress.rewards of a preference run (the runtime's kubetune.train.progress.STATUS_REWARDS):
# trl's reward means of the latest train log line.
REWARD_KEYS = ("chosen", "rejected", "margins", "accuracies", "logpsChosen", "logpsRejected")

TRACKING_KEY = "tracking.json"
TRACKING_KINDS = ("mlflow", "wandb", "tensorboard")
TRACKING_ENTRIES = 4  # one per tracker kind, and room for one more
TRACKING_TEXT_LIMIT = 2048
# Every field at its limit still fits; more is not a description of tracker runs.
MAX_TRACKING_BYTES = 4 * TRACKING_ENTRIES * 10 * TRACKING_TEXT_LIMIT
TRACKING_TEXTS = ("uri", "project", "entity", "experiment", "experimentId", "runId", "mode", "logDir")


def percent(step: int | None, total: int | None) -> str | None:
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return None
    return f"{max(0, min(100, 100 * step // total))}%"


def sanitize(report: Any) -> dict[str, Any]:
    """The fields of the progress contract in `report`, each of its type; everything else is dropped."""
    if not isinstance(report, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key in _INTEGERS:
        value = report.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
            out[key] = value
    for key in _NUMBERS:
        value = report.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    for key in _TEXTS:
        value = report.get(key)
        if isinstance(value, str):
            out[key] = value[:TEXT_LIMIT]
    rewards = report.get("rewards")
    if isinstance(rewards, Mapping):
        kept = {key: rewards[key] for key in REWARD_KEYS if _finite(rewards.get(key))}
        if kept:
            out["rewards"] = kept
    if isinstance(report.get("completed"), bool):
        out["completed"] = report["completed"]
    derived = percent(out.get("step"), out.get("totalSteps"))
    if derived is not None:
        out["percent"] = derived
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(configmap: Mapping[str, Any] | None, key: str) -> Any:
    """The JSON value under `key` of the progress ConfigMap; None when absent, too large or unreadable."""
    text = ((configmap or {}).get("data") or {}).get(key)
    if not isinstance(text, str) or not text or len(text) > MAX_REPORT_BYTES:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def read_report(configmap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sanitized report in the progress ConfigMap; None when it holds none (or nothing readable)."""
    report = _read_json(configmap, PROGRESS_KEY)
    return None if report is None else (sanitize(report) or None)


def final(progress: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The progress of a finished run: its last step and 100%, whichever report arrived last.

    Rank 0's final report and its exit race (the report goes out from a background thread, rate
    bounded); the summary in its termination message carries the final step, so the outcome does
    not depend on which the operator sees first.
    """
    out = dict(progress)
    steps = summary.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0:
        out["step"] = max(steps, out.get("step", 0))
    loss = summary.get("final_train_loss")
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
        out["loss"] = round(loss, 5)  # as the runtime rounds its reports (the Loss column)
    if "step" in out:
        out["totalSteps"] = max(out.get("totalSteps", 0), out["step"]) or out["step"]
    out["completed"] = True
    out["percent"] = "100%"
    out.pop("etaSeconds", None)
    return out


def sanitize_tracking(entries: Any) -> list[dict[str, str]]:
    """The tracker runs in `entries` the operator will show: each of a known kind, known string fields
    no longer than TRACKING_TEXT_LIMIT (a longer one is dropped, not cut: a cut URI leads elsewhere),
    URIs without credentials, `url` only when it is an http(s) link; at most TRACKING_ENTRIES."""
    if not isinstance(entries, list):
        return []
    out: list[dict[str, str]] = []
    for entry in entries:
        if len(out) == TRACKING_ENTRIES:
            break
        if not isinstance(entry, Mapping) or entry.get("kind") not in TRACKING_KINDS:
            continue
        clean = {"kind": entry["kind"]}
        for key in TRACKING_TEXTS:
            value = entry.get(key)
            if isinstance(value, str) and value and len(value) <= TRACKING_TEXT_LIMIT:
                clean[key] = without_credentials(value) if key == "uri" else value
        url = entry.get("url")
        if (
            isinstance(url, str)
            and len(url) <= TRACKING_TEXT_LIMIT
            and url.startswith(("https://", "http://"))
        ):
            clean["url"] = without_credentials(url, keep_fragment=True)
        out.append(clean)
    return out


def read_tracking(configmap: Mapping[str, Any] | None) -> list[dict[str, str]] | None:
    """The cleaned tracker runs in the progress ConfigMap; None when it names none (or nothing readable)."""
    text = ((configmap or {}).get("data") or {}).get(TRACKING_KEY)
    if not isinstance(text, str) or not text or len(text) > MAX_TRACKING_BYTES:
        return None
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return sanitize_tracking(entries) or None


def tracking_summary(entries: Sequence[Mapping[str, str]]) -> str:
    """One line per tracker run for the event that announces them (`kubectl describe` shows it)."""
    lines = []
    for entry in entries:
        where = entry.get("url") or entry.get("uri") or entry.get("logDir") or entry.get("project") or ""
        run = f" run {entry['runId']}" if entry.get("runId") else ""
        lines.append(f"{entry['kind']}{run}: {where}" if where else f"{entry['kind']}{run}")
    return "; ".join(lines)


# --- the fetch step (key fetch.json: kubetune.sources.fetch.FetchProgress) ------------------------

FETCH_KEY = "fetch.json"
_FETCH_INTEGERS = ("sources", "source", "filesDone", "filesTotal", "bytesDone", "bytesTotal")
_FETCH_TEXTS = ("current", "error")
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]*@", re.IGNORECASE)
_QUERY = re.compile(r"(://[^\s?]*)\?[^\s'\"]*")


def sanitize_fetch(report: Any) -> dict[str, Any]:
    """The fetch step's progress as status.fetch: its known fields, each of its type, texts bounded and
    without credentials in any URI they quote, and `fetched` ("1.2MB/5.0MB", the Fetched column)."""
    if not isinstance(report, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key in _FETCH_INTEGERS:
        value = report.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
            out[key] = value
    for key in _FETCH_TEXTS:
        value = report.get(key)
        if isinstance(value, str) and value:
            out[key] = _QUERY.sub(r"\1", _USERINFO.sub(r"\1", value))[:TEXT_LIMIT]
    if isinstance(report.get("done"), bool):
        out["done"] = report["done"]
    if "bytesDone" in out:
        total = out.get("bytesTotal")
        out["fetched"] = human_bytes(out["bytesDone"]) + (f"/{human_bytes(total)}" if total else "")
    return out


def read_fetch(configmap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sanitized fetch progress in the progress ConfigMap; None when there is none."""
    report = _read_json(configmap, FETCH_KEY)
    return None if report is None else (sanitize_fetch(report) or None)


def human_bytes(count: int) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    size, unit = float(count), 0
    while size >= 1000 and unit < len(units) - 1:
        size, unit = size / 1000, unit + 1
    return f"{count}B" if unit == 0 else f"{size:.1f}{units[unit]}"


def fetch_summary(fetch: Mapping[str, Any]) -> str:
    """One line for the Fetching phase's message."""
    where = f"source {fetch.get('source', '?')} of {fetch.get('sources', '?')}"
    current = f" ({fetch['current']})" if fetch.get("current") else ""
    files = f", {fetch.get('filesDone', 0)}/{fetch['filesTotal']} files" if fetch.get("filesTotal") else ""
    done = f", {fetch['fetched']}" if fetch.get("fetched") else ""
    return f"fetching {where}{current}{files}{done}"
