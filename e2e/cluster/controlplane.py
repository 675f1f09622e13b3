"""The local control plane's command lines: one function per component, from the cluster's settings.

Kept apart from localcluster.py (which starts, waits for and stops the processes) so that a test can
check each component's flags without a cluster (tests/unit/packaging/test_controlplane.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ControlPlane:
    state: Path  # pki/, etcd/, kubeconfig
    bin_dir: Path  # etcd, kube-apiserver, kube-controller-manager, kube-scheduler (e2e/cluster/build.sh)
    etcd_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    service_cidr: str
    gateway: str  # host side of the pods' bridge: the API server's advertised address

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def etcd_peer_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port + 10}"


def etcd_argv(cp: ControlPlane) -> list[str]:
    return [
        str(cp.bin_dir / "etcd"),
        "--name=kubetune",
        f"--data-dir={cp.state / 'etcd'}",
        f"--listen-client-urls={cp.etcd_url}",
        f"--advertise-client-urls={cp.etcd_url}",
        f"--listen-peer-urls={cp.etcd_peer_url}",
        f"--initial-advertise-peer-urls={cp.etcd_peer_url}",
        f"--initial-cluster=kubetune={cp.etcd_peer_url}",
        # a throw-away test cluster: losing the last writes on a crash costs nothing, fsyncs cost seconds
        "--unsafe-no-fsync",
        "--log-level=warn",
        "--quota-backend-bytes=4294967296",
    ]


def apiserver_argv(cp: ControlPlane) -> list[str]:
    pki = cp.pki
    return [
        str(cp.bin_dir / "kube-apiserver"),
        f"--etcd-servers={cp.etcd_url}",
        # pods reach the API through the kubernetes Service: kube-proxy sends them to the advertised
        # address (the bridge's)
        "--bind-address=0.0.0.0",
        f"--secure-port={cp.apiserver_port}",
        f"--advertise-address={cp.gateway}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={cp.service_cidr}",
        "--allow-privileged=true",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        # webhooks and aggregated APIs behind a Service are called at an endpoint's pod IP (the host
        # reaches pods through the bridge; a Service IP is routed for pods only)
        "--enable-aggregator-routing=true",
        "--profiling=false",
        "--v=1",
    ]


def _api_client_argv(cp: ControlPlane, binary: str, port: int, *flags: str) -> list[str]:
    """The controller manager and the scheduler: API clients as the admin, serving health on 127.0.0.1.

    One instance each, so no leader election (it would only delay the start)."""
    return [
        str(cp.bin_dir / binary),
        f"--kubeconfig={cp.kubeconfig}",
        f"--authentication-kubeconfig={cp.kubeconfig}",
        f"--authorization-kubeconfig={cp.kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        *flags,
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(cp: ControlPlane) -> list[str]:
    pki = cp.pki
    return _api_client_argv(
        cp,
        "kube-controller-manager",
        cp.controller_manager_port,
        "--controllers=*",
        # each controller with its own ServiceAccount, as in a real cluster (RBAC is tested for real)
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={cp.service_cidr}",
        "--concurrent-statefulset-syncs=5",
        "--concurrent-gc-syncs=10",
    )


def scheduler_argv(cp: ControlPlane) -> list[str]:
    return _api_client_argv(cp, "kube-scheduler", cp.scheduler_port)
