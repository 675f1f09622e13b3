"""A 2-replica StatefulSet behind a headless Service whose pods all-reduce with torch.distributed
(gloo), finding each other through the StatefulSet DNS names, as the operator's workers do."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.kube_cluster import TEST_IMAGE, wait_for

pytestmark = pytest.mark.integration

SCRIPT = """
import datetime, os, socket, sys, time
import torch
import torch.distributed as dist

rank = int(os.environ["POD_INDEX"])
if os.path.exists("/data/done"):  # restarted after success (restartPolicy Always): stay up
    print("already done", flush=True)
    while True:
        time.sleep(1)
master = f"ar-0.ar.{os.environ['POD_NS']}.svc.cluster.local"
print(f"rank {rank} on {socket.gethostname()}; master {master}", flush=True)
deadline = time.time() + 60
while True:  # the peer's name resolves once its pod has an address
    try:
        socket.getaddrinfo(master, 29500)
        break
    except socket.gaierror:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
dist.init_process_group("gloo", init_method=f"tcp://{master}:29500", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
t = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
dist.all_reduce(t)
assert t.tolist() == [3.0, 30.0], t
print(f"all_reduce ok: {t.tolist()}", flush=True)
with open("/data/done", "w") as f:
    f.write(f"rank {rank} ok\\n")
dist.destroy_process_group()
with open("/dev/termination-log", "w") as f:
    f.write(f"rank {rank} all_reduce {t.tolist()}")
"""


def test_statefulset_gloo_all_reduce_over_dns_names(kube_cluster, kube_namespace):
    api = kube_cluster.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = kube_namespace
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "ar-script"}, "data": {"allreduce.py": SCRIPT}}
    )
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "ar"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "ar"},
                "publishNotReadyAddresses": True,
                "ports": [{"name": "c10d", "port": 29500}],
            },
        },
    )
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ar"},
        "spec": {
            "serviceName": "ar",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "ar"}},
            "template": {
                "metadata": {"labels": {"app": "ar"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "worker",
                            "image": TEST_IMAGE,
                            "command": ["python", "-u", "/scripts/allreduce.py"],
                            "env": [
                                {
                                    "name": "POD_INDEX",
                                    "valueFrom": {
                                        "fieldRef": {
                                            "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"
                                        }
                                    },
                                },
                                {
                                    "name": "POD_NS",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                                {"name": "OMP_NUM_THREADS", "value": "1"},
                            ],
                            "volumeMounts": [
                                {"name": "scripts", "mountPath": "/scripts"},
                                {"name": "data", "mountPath": "/data"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "scripts", "configMap": {"name": "ar-script"}}],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }
    apps.create_namespaced_stateful_set(ns, sts)

    def completed_once(name):
        """The worker's run that exited; once it is lastState the pod has settled (see SCRIPT)."""
        try:
            st = core.read_namespaced_pod_status(name, ns).status
        except client.ApiException:
            return None
        for cs in st.container_statuses or []:
            if cs.last_state and cs.last_state.terminated and cs.state.running:
                return cs.last_state.terminated
            if cs.state.terminated and cs.state.terminated.exit_code != 0:
                raise AssertionError(f"{name} failed: {cs.state.terminated}")
        return None

    results = {}
    for name in ("ar-0", "ar-1"):
        results[name] = wait_for(
            lambda n=name: completed_once(n), 120, interval=0.5, what=f"{name} to finish its all-reduce"
        )
    for name, term in results.items():
        log = kube_cluster.kubectl("logs", name, "-n", ns, "--previous").stdout
        assert term.exit_code == 0 and term.reason == "Completed", (name, term, log)
        assert "all_reduce [3.0, 30.0]" in (term.message or ""), (name, term)
        assert "all_reduce ok: [3.0, 30.0]" in log and f"on {name};" in log, log
    # both claims were bound to provisioned local volumes
    pvcs = core.list_namespaced_persistent_volume_claim(ns).items
    assert sorted(p.metadata.name for p in pvcs) == ["data-ar-0", "data-ar-1"]
    assert all(p.status.phase == "Bound" for p in pvcs)


TORCHRUN_SCRIPT = """
import os, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank {dist.get_rank()}/{dist.get_world_size()} sum {t.item()}", flush=True)
assert t.item() == 3.0
# Without it, gloo's threads can abort the process at exit ("terminate called without an active
# exception", SIGABRT) after a successful all-reduce: seen once in a CI run.
dist.destroy_process_group()
"""


def test_statefulset_torchrun_c10d_rendezvous(kube_cluster, kube_namespace):
    """torchrun with the c10d rendezvous on <sts>-0.<svc>.<ns>.svc.cluster.local, as the operator runs it."""
    api = kube_cluster.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = kube_namespace
    core.create_namespaced_config_map(ns, {"metadata": {"name": "tr"}, "data": {"ar.py": TORCHRUN_SCRIPT}})
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "tr"},
            "spec": {"clusterIP": "None", "selector": {"app": "tr"}, "publishNotReadyAddresses": True},
        },
    )
    run = (
        "test -e /done/$POD_NAME || { torchrun --nnodes=2 --nproc-per-node=1 --node-rank=$POD_INDEX"
        " --rdzv-backend=c10d --rdzv-endpoint=tr-0.tr.$POD_NS.svc.cluster.local:29400 --rdzv-id=$POD_NS"
        " /s/ar.py && touch /done/$POD_NAME && exit 0; exit 1; }; echo already done; exec sleep 3600"
    )
    env = [
        {
            "name": "POD_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
        },
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    apps.create_namespaced_stateful_set(ns, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "tr"},
        "spec": {
            "serviceName": "tr", "replicas": 2, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "tr"}},
            "template": {"metadata": {"labels": {"app": "tr"}}, "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "w", "image": TEST_IMAGE, "command": ["sh", "-c", run], "env": env,
                                "volumeMounts": [{"name": "s", "mountPath": "/s"},
                                                 {"name": "done", "mountPath": "/done"}]}],
                "volumes": [{"name": "s", "configMap": {"name": "tr"}},
                            {"name": "done", "emptyDir": {}}],
            }},
        },
    })  # fmt: skip

    def finished(name):
        st = core.read_namespaced_pod_status(name, ns).status
        for cs in st.container_statuses or []:
            if cs.last_state and cs.last_state.terminated and cs.state.running:
                return cs.last_state.terminated
        return None

    for name in ("tr-0", "tr-1"):
        term = wait_for(lambda n=name: finished(n), 120, interval=0.5, what=f"{name} torchrun to finish")
        log = kube_cluster.kubectl("logs", name, "-n", ns, "--previous").stdout
        assert term.exit_code == 0, (name, term, log)
        assert "/2 sum 3.0" in log, log
