"""Helpers for the CPU smoke e2e tests: the example's documents, a FineTuneJob run watched through
`kubectl get ftj -w`, and where its outputs and trainer logs live on the local cluster."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "finetune-cpu-smoke.yaml"
OUTPUTS_MOUNT = "/var/lib/kubetune/outputs"


def example_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]


def the_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [doc for doc in docs if doc["kind"] == "FineTuneJob"]
    return job


def with_namespace(docs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    docs = copy.deepcopy(docs)
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def manifest(docs: list[dict[str, Any]]) -> str:
    # YAML, not JSON documents joined by "---": kubectl reads a stream that starts with "{" as JSON only.
    return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass
class Watch:
    """`kubectl get ftj -w` in the background: every row it prints is kept and echoed to the test log."""

    cluster: Any
    namespace: str
    rows: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    thread: threading.Thread | None = None

    def start(self) -> Watch:
        env = {**os.environ, **self.cluster.env, "KUBECONFIG": self.cluster.kubeconfig}
        self.process = subprocess.Popen(
            [self.cluster.kubectl_bin, "-n", self.namespace, "get", "ftj", "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        started = time.monotonic()
        for line in self.process.stdout:
            row = line.rstrip()
            self.rows.append(row)
            print(f"[{time.monotonic() - started:6.1f}s] kubectl get ftj: {row}", flush=True)

    def stop(self) -> list[str]:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.thread is not None:
            self.thread.join(10)
        return self.rows


def job_status(kube, namespace: str, name: str) -> dict[str, Any]:
    found = kube.get("FineTuneJob", namespace, name)
    return (found or {}).get("status") or {}


def events(kube, namespace: str, name: str) -> list[tuple[str, str, str]]:
    found = kube.request("GET", f"/api/v1/namespaces/{namespace}/events",
                         query={"fieldSelector": f"involvedObject.name={name}"})  # fmt: skip
    items = sorted(found["items"], key=lambda e: e["metadata"]["creationTimestamp"])
    return [(e["type"], e["reason"], e.get("message", "")) for e in items]


def claim_directory(kube, namespace: str, claim: str) -> Path:
    """The host directory behind a claim: the local provisioner backs each claim with a hostPath PV."""
    pvc = kube.get("PersistentVolumeClaim", namespace, claim)
    volume = kube.request("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    return Path(volume["spec"]["hostPath"]["path"])


def local_outputs(cluster, kube, namespace: str, claim: str, output_dir: str) -> Path:
    """The host directory of the run's output_dir."""
    return claim_directory(kube, namespace, claim) / Path(output_dir).relative_to(OUTPUTS_MOUNT)


def trainer_logs(cluster, namespace: str, pod: str) -> str:
    """Every run of `pod`'s trainer container the local node kept (e2e/cluster/podlogs.py: pods deleted on
    restart and on success included), oldest first."""
    assert cluster.logs_dir is not None
    runs = sorted(
        (cluster.logs_dir / "pods").glob(f"{namespace}_{pod}_*/trainer/*.log"),
        key=lambda p: p.stat().st_mtime,
    )
    return "\n".join(without_cri_prefix(path.read_text(errors="replace")) for path in runs)


# A kubelet's container log line: `<RFC 3339 time> <stdout|stderr> <F|P> <text>` (P: the line goes on in
# the next entry).
CRI_LINE = re.compile(r"^\S+ (?:stdout|stderr) ([FP]) (.*)$")


def without_cri_prefix(log: str) -> str:
    """The container's own output from a log in the CRI format (the kubelet's); other text unchanged."""
    lines, partial = [], ""
    for line in log.splitlines():
        m = CRI_LINE.match(line)
        if m is None:
            lines.append(line)
        elif m[1] == "P":
            partial += m[2]
        else:
            lines.append(partial + m[2])
            partial = ""
    return "\n".join(lines + ([partial] if partial else []))


def progress_lines(log: str) -> list[dict[str, Any]]:
    """Rank 0's JSON progress lines (stdout is not a terminal in a pod)."""
    found = []
    for line in log.splitlines():
        if line.startswith('{"event"'):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
    return found
