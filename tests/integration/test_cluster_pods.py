"""Pods on the node: environment, volumes, status, restarts, logs, termination."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest
from kubernetes import client

from tests.kube_cluster import TEST_IMAGE, wait_for

pytestmark = pytest.mark.integration


def _pod(name: str, script: str, *, restart: str = "Never", **spec) -> dict:
    ctr = {"name": "main", "image": TEST_IMAGE, "command": ["python", "-u", "-c", textwrap.dedent(script)]}
    ctr.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {"restartPolicy": restart, "containers": [ctr], **spec},
    }


def _status(core, ns: str, name: str):
    return core.read_namespaced_pod_status(name, ns).status


def _phase(core, ns, name, *phases):
    st = _status(core, ns, name)
    return st if st.phase in phases else None


def test_pod_environment_volumes_and_termination_message(kube_cluster, kube_namespace):
    api = kube_cluster.api_client()
    core = client.CoreV1Api(api)
    ns = kube_namespace
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "config.yaml": "a: 1\n"}}
    )
    core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}})
    script = """
        import json, os, socket
        def read(p):
            with open(p) as f:
                return f.read()
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        out = {
            "env": {k: os.environ.get(k) for k in ("POD_NAME", "POD_NS", "POD_IP", "INDEX", "GREETING",
                    "TOKEN", "CPU_LIMIT_M", "LITERAL", "EXPANDED", "FROM_CM_greeting")},
            "config": read("/etc/cfg/config.yaml"),
            "labels": read("/etc/podinfo/labels"),
            "sa_namespace": read(sa + "/namespace"),
            "has_token": len(read(sa + "/token")) > 20,
            "has_ca": "BEGIN CERTIFICATE" in read(sa + "/ca.crt"),
            "scratch_writable": open("/scratch/x", "w").write("x") == 1,
            "tmp_entries": sorted(os.listdir("/tmp")),
            "hostname": socket.gethostname(),
            "cwd": os.getcwd(),
        }
        print("stdout line")
        with open("/dev/termination-log", "w") as f:
            json.dump(out, f)
    """
    pod = _pod(
        "envpod",
        script,
        metadata={"labels": {"apps.kubernetes.io/pod-index": "1", "app": "t"}},
        container={
            "workingDir": "/scratch/wd",
            "resources": {"limits": {"cpu": "1500m"}},
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {
                    "name": "INDEX",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
                    },
                },
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {
                    "name": "CPU_LIMIT_M",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
                },
                {"name": "LITERAL", "value": "lit"},
                {"name": "EXPANDED", "value": "$(LITERAL)-$(POD_NAME)"},
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "FROM_CM_"}],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        },
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {
                "name": "podinfo",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
            {"name": "scratch", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"medium": "Memory"}},
        ],
    )
    core.create_namespaced_pod(ns, pod)
    st = wait_for(lambda: _phase(core, ns, "envpod", "Succeeded", "Failed"), 60, what="pod finished")
    cs = st.container_statuses[0]
    assert st.phase == "Succeeded", cs
    term = cs.state.terminated
    assert term.exit_code == 0 and term.reason == "Completed"
    out = json.loads(term.message)
    assert out["env"] == {
        "POD_NAME": "envpod",
        "POD_NS": ns,
        "POD_IP": st.pod_ip,
        "INDEX": "1",
        "GREETING": "hello",
        "TOKEN": "s3cret",
        "CPU_LIMIT_M": "1500",
        "LITERAL": "lit",
        "EXPANDED": "lit-envpod",
        "FROM_CM_greeting": "hello",
    }
    assert st.pod_ip
    assert out["config"] == "a: 1\n"
    assert 'apps.kubernetes.io/pod-index="1"' in out["labels"]
    assert out["sa_namespace"] == ns and out["has_token"] and out["has_ca"] and out["scratch_writable"]
    # An emptyDir over /tmp starts empty and hides none of the other volumes.
    assert out["tmp_entries"] == []
    assert out["hostname"] == "envpod"
    assert out["cwd"] == "/scratch/wd"
    conds = {c.type: c.status for c in st.conditions}
    assert conds["PodScheduled"] == "True" and conds["Initialized"] == "True"
    assert "stdout line" in kube_cluster.kubectl("logs", "envpod", "-n", ns).stdout


def test_failing_container_is_restarted_with_rising_restart_count(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    ns = kube_namespace
    core.create_namespaced_pod(
        ns, _pod("crasher", "import sys, time; print('attempt', time.time()); sys.exit(1)", restart="Always")
    )

    def restarted_twice():
        st = _status(core, ns, "crasher")
        cs = (st.container_statuses or [None])[0]
        return cs if cs and cs.restart_count >= 2 and cs.last_state.terminated else None

    cs = wait_for(restarted_twice, 60, what="restartCount >= 2")
    assert cs.last_state.terminated.exit_code == 1
    assert cs.last_state.terminated.reason == "Error"
    assert _status(core, ns, "crasher").phase == "Running"
    # A real kubelet can answer for a dead container it is removing just then (its GC keeps one per pod and
    # container while this one crash-loops): "unable to retrieve container logs for containerd://...", exit 0.
    # Ask again until the previous run's own output is there.
    wait_for(
        lambda: "attempt" in kube_cluster.kubectl("logs", "crasher", "-n", ns, "--previous").stdout,
        30,
        what="kubectl logs --previous showing the previous run's output",
    )
    # the count keeps rising
    first = cs.restart_count
    wait_for(
        lambda: _status(core, ns, "crasher").container_statuses[0].restart_count > first,
        30,
        what="another restart",
    )


def test_on_failure_pod_succeeds_after_init_containers_and_a_retry(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    ns = kube_namespace
    script = """
        import os, sys
        p = "/shared/attempts"
        n = int(open(p).read()) if os.path.exists(p) else 0
        open(p, "w").write(str(n + 1))
        assert open("/shared/init-order").read() == "first second "
        sys.exit(0 if n >= 1 else 3)
    """

    def init(name):
        return {
            "name": name,
            "image": TEST_IMAGE,
            "volumeMounts": [{"name": "work", "mountPath": "/shared"}],
            "command": ["python", "-c", f"open('/shared/init-order', 'a').write('{name} ')"],
        }

    pod = _pod(
        "retry",
        script,
        restart="OnFailure",
        container={"volumeMounts": [{"name": "work", "mountPath": "/shared"}]},
        initContainers=[init("first"), init("second")],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    core.create_namespaced_pod(ns, pod)
    st = wait_for(lambda: _phase(core, ns, "retry", "Succeeded", "Failed"), 60, what="pod finished")
    assert st.phase == "Succeeded"
    cs = st.container_statuses[0]
    assert cs.restart_count == 1 and cs.last_state.terminated.exit_code == 3
    assert [c.state.terminated.exit_code for c in st.init_container_statuses] == [0, 0]


def test_never_restart_pod_fails_with_exit_code(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    ns = kube_namespace
    pod = _pod(
        "fails",
        "import sys; print('bad input', file=sys.stderr); sys.exit(2)",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    core.create_namespaced_pod(ns, pod)
    st = wait_for(lambda: _phase(core, ns, "fails", "Succeeded", "Failed"), 60, what="pod finished")
    t = st.container_statuses[0].state.terminated
    assert st.phase == "Failed" and t.exit_code == 2 and t.reason == "Error"
    assert "bad input" in t.message
    assert st.container_statuses[0].restart_count == 0


def test_deleted_pod_gets_sigterm_and_logs_follow(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    ns = kube_namespace
    script = """
        import signal, sys, time
        def term(*_):
            print("got SIGTERM, cleaning up", flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, term)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """
    core.create_namespaced_pod(ns, _pod("sleeper", script, terminationGracePeriodSeconds=30))
    wait_for(
        lambda: "ready" in kube_cluster.kubectl("logs", "sleeper", "-n", ns, check=False).stdout,
        60,
        what="pod running",
    )
    env_kc = {"KUBECONFIG": kube_cluster.kubeconfig}
    follow = subprocess.Popen(
        [kube_cluster.kubectl_bin, "logs", "-f", "sleeper", "-n", ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, **env_kc},
    )
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        core.delete_namespaced_pod("sleeper", ns)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert "ready" in out and "got SIGTERM, cleaning up" in out, (out, err)
    # graceful: it exits on SIGTERM long before the 30 s grace period, and the pod object goes away
    wait_for(
        lambda: not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name == "sleeper"],
        20,
        what="pod object removed",
    )
    assert time.monotonic() - t0 < 20


def test_sigkill_after_grace_period(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    ns = kube_namespace
    script = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        while True:
            time.sleep(0.1)
    """
    core.create_namespaced_pod(ns, _pod("stubborn", script, terminationGracePeriodSeconds=2))
    wait_for(
        lambda: "ignoring" in kube_cluster.kubectl("logs", "stubborn", "-n", ns, check=False).stdout,
        60,
        what="pod running",
    )
    t0 = time.monotonic()
    core.delete_namespaced_pod("stubborn", ns)
    wait_for(
        lambda: not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name == "stubborn"],
        30,
        what="pod object removed",
    )
    assert 1.5 < time.monotonic() - t0 < 15
