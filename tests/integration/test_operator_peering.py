"""Two operator replicas never act twice: kopf peering lets the highest-priority live one work."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubetune_operator.crd import render_peering_crd_yaml
from kubetune_operator.k8s import Kube

from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cases import job
from tests.unit.operator.cluster_support import OperatorProcess, install_crd

pytestmark = pytest.mark.integration

PREFIX = "ktop-peer"
PEERING = "kubetune-test"


def acted(process: OperatorProcess, namespace: str) -> list[str]:
    """The transitions this replica logged for jobs in `namespace` (each reconcile that changed a job)."""
    lines = process.log_path.read_text(errors="replace").splitlines() if process.log_path.exists() else []
    messages = [json.loads(line).get("message", "") for line in lines if line.startswith("{")]
    return [m for m in messages if m.startswith(f"{namespace}/")]


def test_only_the_highest_priority_replica_acts(kube_cluster, tmp_path):
    install_crd(kube_cluster)
    kube_cluster.kubectl("apply", "--server-side", "-f", "-", input=render_peering_crd_yaml())
    for plural in ("kopfpeerings", "clusterkopfpeerings"):
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.kopf.dev", "--timeout=60s")
    ns = kube_cluster.create_namespace(prefix=PREFIX)
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": PEERING, "namespace": ns},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(peering))
    kube = Kube(kube_cluster.api_client())

    def replica(name: str, priority: int) -> OperatorProcess:
        return OperatorProcess(kube_cluster, tmp_path / f"{name}.log", namespaces=[ns], standalone=False,
                               extra_args=("--peering", PEERING, "--priority", str(priority)))  # fmt: skip

    leader, follower = replica("leader", 200), replica("follower", 100)
    try:
        leader.start()
        follower.start()
        time.sleep(3)  # both have seen each other's keep-alive
        for name in ("first", "second"):
            body = job(name, ns, workers=1, image=TEST_IMAGE, suspend=True)
            kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            wait_for(lambda n=name: (kube.get("FineTuneJob", ns, n) or {}).get("status", {}).get("phase"), 30,
                     what=f"{name} reconciled")  # fmt: skip
        time.sleep(2)
        assert {m.split(":")[0] for m in acted(leader, ns)} == {f"{ns}/first", f"{ns}/second"}, (
            leader.log_tail()
        )
        assert acted(follower, ns) == [], follower.log_tail()

        # The leader leaves (and says so in the peering object): the follower takes over.
        leader.stop()
        body = job("third", ns, workers=1, image=TEST_IMAGE, suspend=True)
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        wait_for(lambda: (kube.get("FineTuneJob", ns, "third") or {}).get("status", {}).get("phase"), 90,
                 what="third reconciled by the follower")  # fmt: skip
        assert [m.split(":")[0] for m in acted(follower, ns)] == [f"{ns}/third"], follower.log_tail()
    finally:
        leader.stop()
        follower.stop()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
