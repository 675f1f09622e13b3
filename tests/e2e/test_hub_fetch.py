"""A FineTuneJob whose model and dataset come from a hub mirror trains for real, downloading each file once.

A real hub-compatible server (olah, tests/hub_server.py) serves the tiny model and an alpaca dataset,
each at a pinned commit, on the local cluster's bridge address (the pods' own network reaches it
there). The job names them by hub id with `revision_of_model` / `revision`, `HF_ENDPOINT` points at
the mirror, and the token comes from a Secret through `envFrom`. Two workers share one cache claim:
their fetch steps (init containers running `kubetune fetch`) download under a lock, the trainers run
with HF_HUB_OFFLINE=1. The server's access log must show every file fetched exactly once; a second job
naming the same revisions on the same cache downloads nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil

import pytest
from kubetune_operator.k8s import Kube

from tests.e2e.smoke import events, job_status, trainer_logs
from tests.hub_server import hub_server
from tests.kube_cluster import wait_for
from tests.unit.operator.cluster_support import OperatorProcess, install_crd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "kt-hub"
TIMEOUT = float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "600"))
TOKEN = "hf_e2e_planted_token_4d1f"  # must never show in the job's status or events


def bridge_address() -> str:
    """The host's address on the local cluster's pod bridge: where pods reach a server of the host."""
    cidr = ipaddress.ip_network(os.environ.get("KUBETUNE_POD_CIDR", "10.244.0.0/24"))
    return str(next(cidr.hosts()))  # the node agent gives the bridge the first host address


@pytest.fixture(scope="module")
def hub(kube_cluster, tmp_path_factory):
    if not kube_cluster.local:
        pytest.skip("the pods reach the hub server on the local cluster's bridge")
    from kubetune.tiny import make_fixture

    root = tmp_path_factory.mktemp("hub")
    tiny = make_fixture(root / "tiny", examples=256, seed=0)
    with hub_server(root / "server", host=bridge_address()) as server:
        model = server.commit("model", "acme/tiny", root / "tiny" / "model", "the tiny model")
        data = root / "data-repo"
        data.mkdir()
        shutil.copy(tiny["train"], data / "train.jsonl")
        dataset = server.commit("dataset", "acme/colours", data, "alpaca rows")
        # Readable by the pods (uid 1000): the repositories are served by the host process only.
        yield server, model, dataset


@pytest.fixture(scope="module")
def operator(kube_cluster, tmp_path_factory):
    install_crd(kube_cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {"KUBETUNE_OPERATOR_TORCHRUN": "kubetune launch", "KUBETUNE_OPERATOR_FETCH": "kubetune fetch"}
    process = OperatorProcess(kube_cluster, log, namespaces=[f"{PREFIX}-*"], extra_env=env).start()
    yield process
    process.stop()
    print(f"operator log: {log}")


def finetunejob(name: str, ns: str, endpoint: str, model: str, dataset: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "workers": 2,
            "gpusPerWorker": 0,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            "storage": {"claimTemplate": {"size": "1Gi"}},
            "cache": {"existingClaim": "hub-cache"},  # both jobs' workers share it
            "envFrom": [{"secretRef": {"name": "hub-token"}}],
            "env": [
                {"name": "HF_ENDPOINT", "value": endpoint},
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "KUBETUNE_PROGRESS_INTERVAL", "value": "1"},
            ],
            "terminationGracePeriodSeconds": 30,
            "runPolicy": {"backoffLimit": 1},
            "config": {
                "base_model": "acme/tiny",
                "revision_of_model": model,
                "model_type": "LlamaForCausalLM",
                "datasets": [{"path": "acme/colours", "type": "alpaca", "revision": dataset}],
                "sequence_len": 128,
                "adapter": "lora",
                "lora_r": 8,
                "lora_alpha": 16,
                "lora_target_modules": ["q_proj", "v_proj"],
                "micro_batch_size": 4,
                "max_steps": 6,
                "learning_rate": 0.01,
                "logging_steps": 1,
                "save_steps": 100,
            },
        },
    }


def test_a_job_from_the_hub_mirror_fetches_each_file_once(kube_cluster, hub, operator):
    server, model, dataset = hub
    kube = Kube(kube_cluster.api_client())
    ns = kube_cluster.create_namespace(prefix=PREFIX)
    try:
        kube_cluster.kubectl(
            "-n", ns, "create", "secret", "generic", "hub-token", f"--from-literal=HF_TOKEN={TOKEN}"
        )
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hub-cache"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
        kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(claim))
        files = {
            f"models/acme/tiny/{p.name}"
            for p in (server.mirrors / "models/acme/tiny").iterdir()
            if p.name != ".git"
        }
        files.add("datasets/acme/colours/train.jsonl")
        before = server.downloads()

        first = _run(
            kube_cluster, kube, operator, ns, finetunejob("hub-1", ns, server.endpoint, model, dataset)
        )
        got = server.downloads() - before
        print(f"downloads by job 1 (2 workers): {dict(got)}")
        assert set(got) == files and set(got.values()) == {1}, got
        assert (
            first["fetch"]["done"] is True
            and first["fetch"]["bytesDone"] == first["fetch"]["bytesTotal"] > 500_000
        )
        row = kube_cluster.kubectl("-n", ns, "get", "ftj", "hub-1").stdout
        print(row)
        assert first["fetch"]["fetched"] in row  # the Fetched column

        resolves = len(server.requests())
        second = _run(
            kube_cluster, kube, operator, ns, finetunejob("hub-2", ns, server.endpoint, model, dataset)
        )
        assert server.downloads() - before == got, "the second job downloaded again"
        assert server.requests()[resolves:] == [], "pinned and cached: the second job never asks the hub"
        assert second["fetch"]["done"] is True

        shown = json.dumps([job_status(kube, ns, n) for n in ("hub-1", "hub-2")]) + json.dumps(
            events(kube, ns, "hub-1") + events(kube, ns, "hub-2")
        )
        assert TOKEN not in shown
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _run(kube_cluster, kube, operator, ns: str, job: dict) -> dict:
    name = job["metadata"]["name"]
    kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(job))

    def finished():
        status = job_status(kube, ns, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        status = wait_for(finished, TIMEOUT, interval=1, what=f"FineTuneJob {ns}/{name} to finish")
    except Exception:
        print("operator log (tail):\n" + operator.log_tail(60))
        print(kube_cluster.kubectl("-n", ns, "get", "ftj,pods", "-o", "wide", check=False).stdout)
        raise
    if status["phase"] != "Succeeded":
        print("operator log (tail):\n" + operator.log_tail(60))
        print(trainer_logs(kube_cluster, ns, f"{name}-0")[-4000:])
    assert status["phase"] == "Succeeded", status
    return status
