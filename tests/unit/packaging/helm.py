"""Finding and running helm for the chart tests (unit tier: `helm template`; e2e tier: install).

The helm binary is the pinned one e2e/cluster/build.sh builds next to the local cluster's
binaries (HELM_VERSION in e2e/cluster/versions.env); KUBETUNE_HELM or a helm on PATH also work.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "kubetune"
BUILD_SH = REPO / "e2e" / "cluster" / "build.sh"


def find_helm() -> str | None:
    """The pinned helm if it has been built, else KUBETUNE_HELM, else helm on PATH; None if none."""
    if os.environ.get("KUBETUNE_HELM"):
        return os.environ["KUBETUNE_HELM"]
    if BUILD_SH.exists():
        p = subprocess.run([str(BUILD_SH), "bindir"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0 and p.stdout.strip():
            candidate = Path(p.stdout.strip().splitlines()[-1]) / "helm"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("helm")


def run(
    helm: str, *args: str, check: bool = True, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def set_args(values: Mapping[str, Any]) -> list[str]:
    """--set-json for each dotted key, so types survive (booleans, lists, objects)."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template(
    helm: str,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "kubetune",
    namespace: str = "kubetune-system",
    extra: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart and return its documents (empty ones dropped).

    Renders are cached per argument set (the tests render the same combinations repeatedly and
    each helm run costs about a second on a busy 2-core machine); callers get their own copy.
    """
    key = json.dumps(values or {}, sort_keys=True)
    return copy.deepcopy(_template(helm, key, release, namespace, tuple(extra)))


@functools.lru_cache(maxsize=64)
def _template(helm: str, values_json: str, release: str, namespace: str, extra: tuple[str, ...]) -> list:
    values = json.loads(values_json)
    p = run(helm, "template", release, str(CHART), "--namespace", namespace, *set_args(values), *extra)
    return [doc for doc in yaml.safe_load_all(p.stdout) if doc]


def by_kind(docs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def one(docs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> Mapping[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
