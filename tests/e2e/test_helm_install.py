"""The Helm chart installed into the real local cluster: the operator runs in-cluster from the
chart's Deployment (the operator image, imported into the local node's containerd) and the CPU smoke
FineTuneJob trains to Succeeded through it.

Namespaced scope, so the operator (and its Role) see only this test's namespace. The FineTuneJob
CRD is cluster-wide and shared with the other suites: the release takes it over
(`--take-ownership`) and leaves it behind on uninstall (`crds.keep`), which this test checks.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import yaml

from tests.kube_cluster import wait_for
from tests.unit.operator import cases
from tests.unit.packaging.helm import CHART, REPO, find_helm, set_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "finetune-cpu-smoke.yaml"
CRD = "finetunejobs.kubetune.dev"
SUCCEED_TIMEOUT = float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "900"))


class Helm:
    def __init__(self, binary: str, kubeconfig: str, namespace: str, release: str):
        self.binary, self.kubeconfig, self.namespace, self.release = binary, kubeconfig, namespace, release

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        p = subprocess.run([self.binary, *args, "--namespace", self.namespace], capture_output=True, text=True,
                           env=env, timeout=timeout)  # fmt: skip
        if check and p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def install(self, values: dict, *extra: str) -> subprocess.CompletedProcess:
        return self("upgrade", "--install", self.release, str(CHART), *set_args(values), "--wait",
                    "--timeout", "240s", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def helm_binary(kube_cluster) -> str:
    found = find_helm()  # kube_cluster built the pinned helm next to kubectl
    if found is None:
        pytest.skip("helm is not available (e2e/localcluster.sh bin builds it; or set KUBETUNE_HELM)")
    return found


def _json(kube_cluster, *args: str) -> dict:
    return json.loads(kube_cluster.kubectl(*args, "-o", "json").stdout)


def _operator_logs(kube_cluster, ns: str, release: str) -> str:
    p = kube_cluster.kubectl("-n", ns, "logs", f"deployment/{release}-kubetune", "--tail=-1", check=False)
    return p.stdout + p.stderr


def _available(kube_cluster, ns: str, name: str, replicas: int) -> dict:
    """The Deployment once `replicas` pods are available and none is left over from a rollout."""

    def ready():
        d = _json(kube_cluster, "-n", ns, "get", "deployment", name)
        st = d.get("status") or {}
        done = st.get("availableReplicas") == replicas and st.get("updatedReplicas") == replicas
        return d if done and st.get("replicas") == replicas else None

    return wait_for(ready, 120, interval=1, what=f"deployment {name} with {replicas} available replica(s)")


def _phase(kube_cluster, ns: str, name: str) -> str | None:
    return (_json(kube_cluster, "-n", ns, "get", "ftj", name).get("status") or {}).get("phase")


def _apiserver_reaches_services(kube_cluster) -> bool:
    """A real cluster routes Services; the local one only with kube-apiserver --enable-aggregator-routing."""
    if not kube_cluster.local:
        return True
    state = Path(os.environ.get("KUBETUNE_STATE_DIR", "/tmp/kubetune-cluster"))
    try:
        pid = int((state / "pids" / "kube-apiserver.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"--enable-aggregator-routing=true" in cmdline


def _smoke_documents(ns: str) -> tuple[list[dict], str]:
    if not EXAMPLE.exists():
        pytest.fail(f"{EXAMPLE.relative_to(REPO)} is missing (issue 6 ships it)")
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = ns
    jobs = [d["metadata"]["name"] for d in docs if d.get("kind") == "FineTuneJob"]
    assert len(jobs) == 1, f"{EXAMPLE.name} should hold one FineTuneJob, found {jobs}"
    return docs, jobs[0]


def test_chart_installs_and_runs_the_cpu_smoke_job(kube_cluster, helm_binary, kube_namespace):
    ns = kube_namespace
    release = "kt-" + ns.rsplit("-", 1)[-1]
    fullname = f"{release}-kubetune"
    helm = Helm(helm_binary, kube_cluster.kubeconfig, ns, release)
    values = {
        "scope.mode": "namespaced",
        "logFormat": "plain",
        "crds.keep": True,
    }
    crd_existed = kube_cluster.kubectl("get", "crd", CRD, check=False).returncode == 0

    # --- install: the operator Deployment comes up in-cluster --------------------------------------
    started = time.monotonic()
    helm.install(values, "--take-ownership")
    install_seconds = time.monotonic() - started
    try:
        # The webhook is on, so HA is too (ha.enabled: null): creates never wait for a lone replica.
        deployment = _available(kube_cluster, ns, fullname, 2)
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        pods = _json(kube_cluster, "-n", ns, "get", "pods", "-l", f"app.kubernetes.io/instance={release}")[
            "items"
        ]
        assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Running"}
        assert pods[0]["spec"]["containers"][0]["command"] == ["kubetune-operator"]
        wait_for(lambda: "watching" in _operator_logs(kube_cluster, ns, release), 60,
                 what="the operator's startup log line")  # fmt: skip

        # Namespaced mode binds nothing cluster-wide (the log check at the end shows none is needed).
        bindings = _json(
            kube_cluster, "get", "clusterrolebindings", "-l", f"app.kubernetes.io/instance={release}"
        )
        assert bindings["items"] == [], [b["metadata"]["name"] for b in bindings["items"]]

        crd = _json(kube_cluster, "get", "crd", CRD)
        annotations = crd["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["meta.helm.sh/release-name"] == release

        # --- the self-signed webhook certificate survives an upgrade (lookup) ----------------------
        secret_before = _json(kube_cluster, "-n", ns, "get", "secret", f"{fullname}-webhook-tls")["data"]
        helm.install(values)
        secret_after = _json(kube_cluster, "-n", ns, "get", "secret", f"{fullname}-webhook-tls")["data"]
        assert secret_after == secret_before, "helm upgrade regenerated the webhook certificate"
        vwc = _json(kube_cluster, "get", "validatingwebhookconfiguration", fullname)
        assert vwc["webhooks"][0]["clientConfig"]["caBundle"] == secret_before["ca.crt"]
        assert base64.b64decode(secret_before["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")

        # --- admission through the webhook Service -------------------------------------------------
        # The API server calls the webhook through its Service. The local cluster's kube-proxy routes
        # Service IPs for pods only: its API server (a host process) reaches a Service only with
        # --enable-aggregator-routing=true (it then dials the pod's IP on the local bridge); without it the
        # call would go nowhere, so the webhook is switched off before any FineTuneJob is applied, and the
        # test says so.
        bad_job = cases.bad_job("unknown-dataset-type", namespace=ns)
        if _apiserver_reaches_services(kube_cluster):
            # Available replicas listen on the webhook port (the readiness probe checks it), but the API
            # server may not see their endpoints yet: ask again until the webhook answers.
            def answered():
                p = kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(bad_job), check=False)
                return None if "failed calling webhook" in p.stderr else p

            bad = wait_for(answered, 60, interval=1, what="the webhook to answer")
            assert bad.returncode != 0, "the webhook admitted a job with an unknown dataset type"
            assert "denied the request" in bad.stderr and "spec.config.datasets[0].type" in bad.stderr, (
                bad.stderr
            )
            print(f"webhook refused the bad job: {bad.stderr.strip()}")

            # An operator pod goes (a restart, an upgrade, a node drain): creates keep being admitted
            # by the other replica, every second while the replacement starts.
            # The deleted pod must keep answering until it has left the endpoints (--shutdown-drain).
            # Its replacement is listed once the chart's readiness probe (a TCP check of the webhook port)
            # passes; a refusal by the replacement's address is counted apart.
            good = cases.job("restart-probe", ns, workers=1, suspend=True)
            deleted = _json(kube_cluster, "-n", ns, "get", "pod", pods[0]["metadata"]["name"])["status"][
                "podIP"
            ]
            kube_cluster.kubectl("-n", ns, "delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
            refused_by_replacement = []
            for _ in range(15):
                p = kube_cluster.kubectl("-n", ns, "apply", "--dry-run=server", "-f", "-", input=json.dumps(good),
                                         check=False)  # fmt: skip
                if p.returncode != 0:
                    assert f"{deleted}:" not in p.stderr, (
                        f"the deleted operator pod stopped too early: {p.stderr}"
                    )
                    assert "connection refused" in p.stderr, (
                        f"a create was refused during a restart: {p.stderr}"
                    )
                    refused_by_replacement.append(p.stderr)
                time.sleep(1)
            assert len(refused_by_replacement) <= 5, refused_by_replacement
            _available(kube_cluster, ns, fullname, 2)
        else:
            warnings.warn(
                "webhook not exercised: the local kube-apiserver runs without --enable-aggregator-routing=true "
                "and cannot reach Service endpoints; the chart was reinstalled with webhook.enabled=false",
                stacklevel=1,
            )
            values["webhook.enabled"] = False
            helm.install(values)
            gone = kube_cluster.kubectl("get", "validatingwebhookconfiguration", fullname, check=False)
            assert gone.returncode != 0
            kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(bad_job))
            name = bad_job["metadata"]["name"]
            failed = wait_for(
                lambda: (
                    _phase(kube_cluster, ns, name) == "Failed"
                    and _json(kube_cluster, "-n", ns, "get", "ftj", name)
                ),
                120,
                what="the chart's operator to fail the bad job",
            )
            assert "spec.config.datasets[0].type" in failed["status"]["message"], failed["status"]
            print(f"operator failed the bad job: {failed['status']['message']}")

        # --- the CPU smoke job trains to Succeeded through the chart's operator ---------------------
        docs, job = _smoke_documents(ns)
        # YAML, not JSON documents joined by `---`: kubectl reads a stream starting with `{` as one JSON value.
        kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
        seen: list[str] = []

        def succeeded():
            line = kube_cluster.kubectl(
                "-n", ns, "get", "ftj", job, "--no-headers", check=False
            ).stdout.strip()
            if line and (not seen or seen[-1] != line):
                seen.append(line)
                print(f"kubectl get ftj: {line}")
            status = _json(kube_cluster, "-n", ns, "get", "ftj", job).get("status") or {}
            assert status.get("phase") != "Failed", f"the smoke job failed: {status.get('message')}"
            return status if status.get("phase") == "Succeeded" else None

        started = time.monotonic()
        status = wait_for(succeeded, SUCCEED_TIMEOUT, interval=2, what=f"FineTuneJob {job} to succeed")
        print(
            f"helm install {install_seconds:.1f}s; smoke job Succeeded in {time.monotonic() - started:.1f}s"
        )
        assert (
            status["observedGeneration"]
            == _json(kube_cluster, "-n", ns, "get", "ftj", job)["metadata"]["generation"]
        )
        assert status["progress"]["completed"] is True
        assert isinstance(status["progress"]["loss"], (int, float))
        assert status["outputs"]["outputDir"]

        # Children belong to the job (owner reference) and carry no copy of the chart's labels.
        sts = _json(kube_cluster, "-n", ns, "get", "statefulset", job)
        assert sts["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
        assert "app.kubernetes.io/instance" not in sts["metadata"].get("labels", {})

        logs = _operator_logs(kube_cluster, ns, release)
        assert "Forbidden" not in logs and " 403" not in logs, (
            "the chart's RBAC refused an operator call:\n" + logs[-5000:]
        )
    except BaseException:
        print("operator log (tail):\n" + _operator_logs(kube_cluster, ns, release)[-8000:])
        raise
    finally:
        helm("uninstall", release, "--wait", "--timeout", "120s", check=False)

    # crds.keep: the CRD (and every job in the cluster) outlives the release.
    assert kube_cluster.kubectl("get", "crd", CRD, check=False).returncode == 0
    assert kube_cluster.kubectl("get", "deployment", "-n", ns, fullname, check=False).returncode != 0
    if not crd_existed:
        print("the FineTuneJob CRD was installed by this test and is kept for the other suites")


def test_ha_install_peers_the_replicas(kube_cluster, helm_binary, kube_namespace):
    """HA mode: kopf's peering CRDs and the peering object come with the release (the object as a
    post-install hook, since its CRD is created by the same install), two replicas run, and both
    register in the peering object, where the highest priority one is the active one."""
    ns = kube_namespace
    release = "ha-" + ns.rsplit("-", 1)[-1]
    helm = Helm(helm_binary, kube_cluster.kubeconfig, ns, release)
    peering_crds = ["kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"]
    existed = {c: kube_cluster.kubectl("get", "crd", c, check=False).returncode == 0 for c in peering_crds}
    values = {
        "scope.mode": "namespaced",
        "ha.enabled": True,
        "crds.enabled": False,  # the FineTuneJob CRD belongs to the other test's release
        "webhook.enabled": False,
        "metrics.service.enabled": False,
        # Peering CRDs another suite left behind are adopted and kept; ours go with the release.
        "crds.keep": any(existed.values()),
        "logFormat": "plain",
    }
    try:
        helm.install(values, "--take-ownership")
        deployment = _available(kube_cluster, ns, f"{release}-kubetune", 2)
        assert deployment["spec"]["replicas"] == 2
        assert _json(kube_cluster, "-n", ns, "get", "pdb", f"{release}-kubetune")["spec"]["minAvailable"] == 1

        def two_peers():
            peering = _json(kube_cluster, "-n", ns, "get", "kopfpeerings.kopf.dev", "kubetune")
            peers = {k: v for k, v in (peering.get("status") or {}).items() if isinstance(v, dict)}
            return peers if len(peers) == 2 else None

        peers = wait_for(two_peers, 90, interval=1, what="both replicas in the KopfPeering status")
        priorities = {pod: p["priority"] for pod, p in peers.items()}  # kopf's identity is POD_ID = pod name
        assert len(set(priorities.values())) == 2, f"replicas must have distinct priorities: {peers}"
        highest = max(priorities, key=priorities.get)

        def active_pods():
            # kopf starts paused in a peering and logs when it resumes or pauses again.
            active = set()
            for pod in priorities:
                log = kube_cluster.kubectl("-n", ns, "logs", pod, "--tail=-1", check=False).stdout
                marks = [
                    line for line in log.splitlines() if "Resuming operations" in line or "Pausing" in line
                ]
                if marks and "Resuming operations" in marks[-1]:
                    active.add(pod)
            return active if active == {highest} else None

        wait_for(
            active_pods, 60, interval=1, what=f"only the highest-priority replica ({highest}) to be active"
        )
    finally:
        helm("uninstall", release, "--wait", "--timeout", "120s", check=False)
        for crd, was_there in existed.items():
            if not was_there:  # leave the cluster as we found it: other suites run operators without peering
                kube_cluster.kubectl("delete", "crd", crd, "--wait=false", check=False)
