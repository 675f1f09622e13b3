"""The fetch step: an init container `fetch` in each worker pod of a job that reads remote sources.

It runs `kubetune fetch CONFIG` (kubetune.sources) before the trainer container starts: every remote
source (hub models and tokenizers at the resolved revision, hub datasets; object stores as their
fetchers register) is downloaded into the cache volume under a per-source lock, keyed by source and
resolved revision. The pods of a job share the cache volume (one claim, `spec.cache`), so the first
pod's fetch downloads and the others wait on the lock and find it done: one download per job, and
none for a later job on the same cache naming the same revision. The trainers then run with
HF_HUB_OFFLINE=1 against the cached copy. Why an init container (rather than a separate Job, or
rank 0 fetching while the others wait): docs/kubernetes.md, "Models and data".

A read-only `spec.cache` gets no fetch step (someone filled it beforehand). Without `spec.cache`
the pods get an emptyDir at the cache path: the fetch still runs before
training, but once per pod (each pod has its own copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.config.sources import Source, remote_sources

FETCH_CONTAINER = "fetch"
# The trainers read only the cache the fetch step filled (users may override either through spec.env).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def job_sources(rendered: Mapping[str, Any]) -> list[Source]:
    """The remote sources of a job's config, as the operator sees it (it cannot look into the pods'
    volumes: a relative directory spelled like a hub id costs a fetch step that downloads nothing)."""
    return remote_sources(rendered, check_local=False)


def wanted(spec, rendered: Mapping[str, Any]) -> bool:
    """A fetch step for jobs that read remote sources, except on a read-only cache: whoever mounts the
    cache read-only filled it (kubetune fetch, elsewhere), and the run reads it as before."""
    return not (spec.cache is not None and spec.cache.readOnly) and bool(job_sources(rendered))


def offline_env(user_names: set[str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in OFFLINE_ENV.items() if k not in user_names]


def fetch_container(trainer: Mapping[str, Any], command: tuple[str, ...], config_path: str) -> dict[str, Any]:
    """The init container: the trainer's image, environment (credentials from spec.env / envFrom, the
    cache location, the progress ConfigMap) and mounts, without the offline switch and without GPUs."""
    offline_added = {e["name"] for e in trainer["env"] if e["name"] in OFFLINE_ENV and e.get("value") == "1"}
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": trainer["image"],
        "command": [*command, config_path],
        "env": [e for e in trainer["env"] if e["name"] not in offline_added],
        "volumeMounts": list(trainer["volumeMounts"]),
        # The failure reason (which source, why) is the termination message kubetune fetch writes.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": trainer["securityContext"],
    }
    for key in ("envFrom", "imagePullPolicy"):
        if key in trainer:
            container[key] = trainer[key]
    resources = {
        part: {k: v for k, v in amounts.items() if k != "nvidia.com/gpu"}
        for part, amounts in (trainer.get("resources") or {}).items()
    }
    resources = {part: amounts for part, amounts in resources.items() if amounts}
    if resources:
        container["resources"] = resources
    return container
