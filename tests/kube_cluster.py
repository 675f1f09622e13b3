"""pytest plugin: the session-scoped ``kube_cluster`` fixture.

By default it starts (or finds already running) the local control plane of
``e2e/localcluster.sh up`` and stops it at the end of the session if this session started it
(``KUBETUNE_KEEP_CLUSTER=1`` keeps it running for the next session: a warm ``up`` is then a
no-op). With ``KUBETUNE_USE_EXISTING_CLUSTER=1`` the suites use the cluster ``KUBECONFIG``
points at (kind, a real cluster, ...) and never start or stop anything.

    def test_x(kube_cluster):
        kube_cluster.kubectl("get", "nodes")             # CompletedProcess, check=True by default
        core = kubernetes.client.CoreV1Api(kube_cluster.api_client())
        kube_cluster.logs_dir                            # component logs (local cluster only)
        kube_cluster.local                               # True for the local process cluster
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCALCLUSTER = REPO / "e2e" / "localcluster.sh"


@dataclass
class KubeCluster:
    kubeconfig: str
    kubectl_bin: str
    logs_dir: Path | None
    local: bool
    env: dict = field(default_factory=dict)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,  # noqa: A002
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, "KUBECONFIG": self.kubeconfig}
        p = subprocess.run(
            [self.kubectl_bin, *args], capture_output=True, text=True, env=env, input=input, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
            )
        return p

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def create_namespace(self, prefix: str = "t") -> str:
        """A fresh namespace (deleted by the caller or left for the session's teardown)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        # pods are refused until the ServiceAccount controller has made the `default` account
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            30,
            interval=0.1,
            what=f"ServiceAccount {name}/default",
        )
        return name


def _kubectl_binary(build_dir: str | None) -> str:
    if os.environ.get("KUBETUNE_KUBECTL"):
        return os.environ["KUBETUNE_KUBECTL"]
    if build_dir:
        return str(Path(build_dir) / "kubectl")
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "no kubectl: set KUBETUNE_KUBECTL or put kubectl on PATH (e2e/localcluster.sh bin builds one)"
        )
    return found


@pytest.fixture(scope="session")
def kube_cluster(request):
    if os.environ.get("KUBETUNE_USE_EXISTING_CLUSTER") == "1":
        kc = os.environ.get("KUBECONFIG")
        if not kc:
            pytest.fail("KUBETUNE_USE_EXISTING_CLUSTER=1 needs KUBECONFIG")
        build_dir = None
        if not os.environ.get("KUBETUNE_KUBECTL") and not shutil.which("kubectl"):
            build_dir = _build()
        yield KubeCluster(
            kubeconfig=kc.split(os.pathsep)[0],
            kubectl_bin=_kubectl_binary(build_dir),
            logs_dir=None,
            local=False,
        )
        return

    if os.geteuid() != 0:
        pytest.skip(
            "the local cluster needs root (network namespaces, bind mounts); "
            "or set KUBETUNE_USE_EXISTING_CLUSTER=1 with KUBECONFIG"
        )
    build_dir = _build()
    state = Path(os.environ.get("KUBETUNE_STATE_DIR", "/tmp/kubetune-cluster"))
    was_up = subprocess.run([str(LOCALCLUSTER), "status"], capture_output=True, text=True).returncode == 0
    p = subprocess.run([str(LOCALCLUSTER), "up"], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(
            f"e2e/localcluster.sh up failed ({p.returncode}); logs in {state / 'logs'}\n{p.stderr[-5000:]}"
        )
    kubeconfig = p.stdout.strip().splitlines()[-1]
    cluster = KubeCluster(
        kubeconfig=kubeconfig, kubectl_bin=_kubectl_binary(build_dir), logs_dir=state / "logs", local=True
    )
    yield cluster
    if not was_up and os.environ.get("KUBETUNE_KEEP_CLUSTER") != "1":
        subprocess.run([str(LOCALCLUSTER), "down"], capture_output=True, text=True, timeout=300)


def _build() -> str:
    p = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "build.sh"), "build"], capture_output=True, text=True, timeout=5400
    )
    if p.returncode != 0:
        pytest.fail(f"e2e/cluster/build.sh failed:\n{p.stderr[-5000:]}")
    return p.stdout.strip().splitlines()[-1]


def pytest_collection_finish(session):
    """Build what the local cluster needs before the first test when any selected test uses it (the
    control plane, the node, the images its pods run: e2e/localcluster.sh build, a no-op while cached):
    a cold build (tens of minutes on 2 cores, docs/testing.md) then counts against no test's timeout."""
    if os.environ.get("KUBETUNE_USE_EXISTING_CLUSTER") == "1" or os.geteuid() != 0:
        return
    if session.config.option.collectonly:
        return
    if not any("kube_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(
            "kube_cluster: e2e/localcluster.sh build (control plane, node, operator and runtime images; "
            "cold: see docs/testing.md; a no-op while cached) ..."
        )
    p = subprocess.run([str(LOCALCLUSTER), "build"], capture_output=True, text=True)
    if p.returncode != 0 and tr is not None:  # the kube_cluster fixture reports it as the tests' failure
        tr.write_line(f"kube_cluster: build failed:\n{p.stderr[-3000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test that used the local cluster, say where the component logs are."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "kube_cluster" in getattr(item, "fixturenames", ()):
        state = Path(os.environ.get("KUBETUNE_STATE_DIR", "/tmp/kubetune-cluster"))
        if os.environ.get("KUBETUNE_USE_EXISTING_CLUSTER") != "1":
            rep.sections.append(
                ("kube_cluster", f"component logs: {state / 'logs'}; pod logs: {state / 'logs' / 'pods'}")
            )


# ---------------------------------------------------------------- helpers for cluster tests
# The image the pod tests run: the runtime image, which the local node imports under this name (it carries
# the project's environment); on another cluster, one that carries the same environment.
TEST_IMAGE = os.environ.get("KUBETUNE_TEST_IMAGE", "kubetune/runtime:dev")


def wait_for(fn, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
    """Call fn until it returns something truthy (exceptions count as not yet); return that."""
    import time

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            v = fn()
        except Exception as e:  # noqa: BLE001 - remembered for the failure message
            last, v = e, None
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


@pytest.fixture
def kube_namespace(kube_cluster):
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = kube_cluster.create_namespace()
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
