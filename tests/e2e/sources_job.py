"""What the e2e tests of remote sources share (test_hub_fetch.py, test_object_store_job.py): the servers'
address as the pods see it, the operator they run under, the two-worker LoRA FineTuneJob whose sources
they vary, the cache claim its workers share, and running one job to its end."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import pytest

from tests.e2e.smoke import job_status, trainer_logs
from tests.kube_cluster import wait_for
from tests.unit.operator.cluster_support import OperatorProcess, install_crd

PREFIX = "kt-hub"  # the operator fixture watches PREFIX-* namespaces
TIMEOUT = float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "600"))


def bridge_address() -> str:
    """The host's address on the local cluster's pod bridge: where pods reach a server of the host."""
    cidr = ipaddress.ip_network(os.environ.get("KUBETUNE_POD_CIDR", "10.244.0.0/24"))
    return str(next(cidr.hosts()))  # localcluster.py gives the bridge the first host address


@pytest.fixture(scope="module")
def operator(kube_cluster, tmp_path_factory):
    install_crd(kube_cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {"KUBETUNE_OPERATOR_TORCHRUN": "kubetune launch", "KUBETUNE_OPERATOR_FETCH": "kubetune fetch"}
    process = OperatorProcess(kube_cluster, log, namespaces=[f"{PREFIX}-*"], extra_env=env).start()
    yield process
    process.stop()
    print(f"operator log: {log}")


def cache_claim(name: str) -> dict[str, Any]:
    """A 1 GiB claim the job's workers mount as their shared cache (`spec.cache.existingClaim`)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def sources_job(
    name: str, ns: str, *, cache: str, secret: str, env: dict[str, str], sources: dict[str, Any]
) -> dict[str, Any]:
    """Two CPU workers fine-tune the tiny Llama with LoRA for 6 steps; `sources` (the config keys naming the
    model and data, and where the result goes) and `env` (the servers' endpoints) are what a test varies.
    Credentials come from Secret `secret` through envFrom; both workers share the claim `cache`."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "workers": 2,
            "gpusPerWorker": 0,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            "storage": {"claimTemplate": {"size": "1Gi"}},
            "cache": {"existingClaim": cache},
            "envFrom": [{"secretRef": {"name": secret}}],
            "env": [
                *({"name": key, "value": value} for key, value in env.items()),
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "KUBETUNE_PROGRESS_INTERVAL", "value": "1"},
            ],
            "terminationGracePeriodSeconds": 30,
            "runPolicy": {"backoffLimit": 1},
            "config": {
                **sources,
                "model_type": "LlamaForCausalLM",
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


def run_job(kube_cluster, kube, operator, ns: str, job: dict[str, Any]) -> dict[str, Any]:
    """Applies `job`, waits for Succeeded or Failed (printing the operator's and trainer's logs when it is
    not Succeeded) and returns its final status."""
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
