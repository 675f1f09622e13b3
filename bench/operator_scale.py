#!/usr/bin/env python3
"""Operator scale: N FineTuneJobs applied at once; how long until every one has its children?

    python bench/operator_scale.py                 # against $KUBECONFIG, or starts e2e/localcluster.sh
    python bench/operator_scale.py --record        # also append the result to bench/results/operator_scale.jsonl

It starts `kubetune-operator` (as users do) in a fresh namespace, applies N jobs in one `kubectl
apply`, and measures:
  * all_children_s: from the apply to the moment every job has its ConfigMap, Service,
    StatefulSet, ServiceAccount, Role and RoleBinding (the issue's bar: 60 s for 100 jobs);
  * job_to_statefulset p50/p95: per job, its StatefulSet's creation minus its own (1 s resolution);
  * reconcile p50/p95: from the operator's kubetune_reconcile_duration_seconds histogram;
  * the operator's resident memory (now and peak) and CPU time.
The jobs' pods ask for a node label no node has: they stay Pending (Unschedulable), so the run
measures the operator and the API server, not a hundred Python trainers on a 2-core machine.
The operator still reconciles every pod event and writes the "cannot be scheduled" status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes.config import new_client_from_config  # noqa: E402
from kubetune_operator.k8s import Kube  # noqa: E402
from kubetune_operator.pods import parse_time  # noqa: E402

from tests.unit.operator.cases import job  # noqa: E402
from tests.unit.operator.cluster_support import OperatorProcess, install_crd  # noqa: E402

KINDS = ("ConfigMap", "Service", "StatefulSet", "ServiceAccount", "Role", "RoleBinding")
RESULTS = REPO / "bench" / "results" / "operator_scale.jsonl"


class Cluster:
    """The two things OperatorProcess and install_crd need: a kubeconfig and kubectl."""

    def __init__(self, kubeconfig: str, kubectl: str):
        self.kubeconfig = kubeconfig
        self.kubectl_bin = kubectl

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:  # noqa: A002
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        done = subprocess.run([self.kubectl_bin, *args], input=input, capture_output=True, text=True, env=env)
        if check and done.returncode:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done


def connect() -> Cluster:
    kubectl = os.environ.get("KUBETUNE_KUBECTL")
    if not kubectl:
        bindir = subprocess.run([str(REPO / "e2e" / "localcluster.sh"), "bin"], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1]  # fmt: skip
        kubectl = str(Path(bindir) / "kubectl")
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        up = subprocess.run(
            [str(REPO / "e2e" / "localcluster.sh"), "up"], capture_output=True, text=True, check=True
        )
        kubeconfig = up.stdout.strip().splitlines()[-1]
    return Cluster(kubeconfig, kubectl)


def histogram_quantile(metrics: str, name: str, q: float) -> float | None:
    """Prometheus' histogram_quantile over one histogram in text exposition (linear in a bucket)."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / max(
                count - previous_count, 1
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def counter(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="worker pods per job")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds allowed for all children")
    parser.add_argument("--operator-workers", type=int, default=None, help="the operator's --workers")
    parser.add_argument(
        "--record", action="store_true", help=f"append the result to {RESULTS.relative_to(REPO)}"
    )
    args = parser.parse_args()

    cluster = connect()
    install_crd(cluster)
    kube = Kube(new_client_from_config(config_file=cluster.kubeconfig))
    namespace = f"ktop-bench-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    log = Path(tempfile.mkdtemp(prefix="operator-scale-")) / "operator.log"
    extra = ("--workers", str(args.operator_workers)) if args.operator_workers else ()
    operator = OperatorProcess(cluster, log, namespaces=["ktop-bench-*"], extra_args=extra).start()
    try:
        time.sleep(1.0)
        baseline_rss = operator.rss_bytes()
        jobs = [
            job(
                f"scale-{i:03d}",
                namespace,
                workers=args.workers,
                nodeSelector={"kubetune.dev/bench": "no-such-node"},
            )
            for i in range(args.jobs)
        ]
        manifest = "\n---\n".join(json.dumps(body) for body in jobs)
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=manifest)
        applied_s = time.monotonic() - started
        complete: set[str] = set()
        while time.monotonic() - started < args.limit * 3:
            names: dict[str, set[str]] = {}
            for kind in KINDS:
                for obj in kube.list(kind, namespace, {"app.kubernetes.io/managed-by": "kubetune"}):
                    names.setdefault(obj["metadata"]["labels"]["kubetune.dev/job-name"], set()).add(kind)
            complete = {name for name, kinds in names.items() if kinds == set(KINDS)}
            if len(complete) == args.jobs:
                break
            time.sleep(0.25)
        all_children_s = time.monotonic() - started
        # Let the pod events settle, then read the operator's own numbers.
        time.sleep(5)
        metrics = operator.metrics()
        pid = operator.process.pid
        stored = {
            o["metadata"]["name"]: o
            for o in kube.list("StatefulSet", namespace, {"app.kubernetes.io/managed-by": "kubetune"})
        }
        lags = []
        pending = 0
        for body in kube.list_jobs(namespace):
            name = body["metadata"]["name"]
            pending += body.get("status", {}).get("phase") == "Pending"
            if name in stored:
                lags.append((parse_time(stored[name]["metadata"]["creationTimestamp"])
                             - parse_time(body["metadata"]["creationTimestamp"])).total_seconds())  # fmt: skip
        result = {
            "bench": "operator_scale",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip(),  # fmt: skip
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "workers_per_job": args.workers,
            "operator_workers": args.operator_workers or 8,
            "load_average_1m": os.getloadavg()[0],
            "jobs_with_all_children": len(complete),
            "apply_s": round(applied_s, 2),
            "all_children_s": round(all_children_s, 2),
            "children_after_apply_s": round(all_children_s - applied_s, 2),
            "limit_s": args.limit,
            "job_to_statefulset_p50_s": percentile(lags, 0.5) if lags else None,
            "job_to_statefulset_p95_s": percentile(lags, 0.95) if lags else None,
            "reconcile_p50_s": round(
                histogram_quantile(metrics, "kubetune_reconcile_duration_seconds", 0.5) or 0, 4
            ),
            "reconcile_p95_s": round(
                histogram_quantile(metrics, "kubetune_reconcile_duration_seconds", 0.95) or 0, 4
            ),
            "reconciles": int(counter(metrics, "kubetune_reconcile_duration_seconds_count")),
            "reconcile_errors": int(counter(metrics, "kubetune_reconcile_errors_total")),
            "jobs_pending": pending,
            "operator_rss_mb_idle": round(baseline_rss / 2**20, 1),
            "operator_rss_mb": round(operator.rss_bytes() / 2**20, 1),
            "operator_peak_rss_mb": round(peak_rss(pid) / 2**20, 1),
            "operator_cpu_s": round(cpu_seconds(pid), 2),
        }
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    line = json.dumps(result)
    print(line)
    ok = result["jobs_with_all_children"] == args.jobs and result["all_children_s"] <= args.limit
    print(
        f"{result['jobs_with_all_children']}/{args.jobs} jobs had all children after {result['all_children_s']} s "
        f"(limit {args.limit} s); reconcile p95 {result['reconcile_p95_s']} s over {result['reconciles']} reconciles; "
        f"operator RSS {result['operator_rss_mb']} MiB (peak {result['operator_peak_rss_mb']} MiB); "
        f"{'OK' if ok else 'TOO SLOW'}",
        file=sys.stderr,
    )
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
