"""The local control plane's command lines (e2e/cluster/controlplane.py) and certificates
(e2e/cluster/pki.py): each component gets the flags the cluster needs from the settings it is given, and
every certificate or key a flag names is one the PKI writes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from e2e.cluster.controlplane import (
    ControlPlane,
    apiserver_argv,
    controller_manager_argv,
    etcd_argv,
    scheduler_argv,
)
from e2e.cluster.pki import write_cluster_pki

ALL_ARGV = (etcd_argv, apiserver_argv, controller_manager_argv, scheduler_argv)


def _settings(tmp_path: Path) -> ControlPlane:
    # ports and addresses unlike the defaults, so that a flag written with a constant shows
    return ControlPlane(
        state=tmp_path / "state",
        bin_dir=tmp_path / "bin",
        etcd_port=24290,
        apiserver_port=6843,
        controller_manager_port=10757,
        scheduler_port=10759,
        service_cidr="10.97.0.0/16",
        gateway="10.249.0.1",
    )


def _flags(argv: list[str]) -> dict[str, str]:
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)
    assert len(flags) == len([a for a in argv[1:] if "=" in a]), f"a flag is given twice: {argv}"
    return flags


def test_etcd_serves_clients_where_the_apiserver_looks(tmp_path: Path) -> None:
    cp = _settings(tmp_path)
    etcd, apiserver = _flags(etcd_argv(cp)), _flags(apiserver_argv(cp))
    assert etcd["listen-client-urls"] == etcd["advertise-client-urls"] == "http://127.0.0.1:24290"
    assert apiserver["etcd-servers"] == etcd["advertise-client-urls"]
    assert etcd["data-dir"] == str(cp.state / "etcd")
    # its peer port must not be the client port: the single member listens on both
    assert etcd["listen-peer-urls"] == etcd["initial-advertise-peer-urls"] == "http://127.0.0.1:24300"
    assert etcd["initial-cluster"] == f"{etcd['name']}=http://127.0.0.1:24300"


def test_apiserver_serves_tls_authenticates_clients_and_authorizes_nodes(tmp_path: Path) -> None:
    cp = _settings(tmp_path)
    flags = _flags(apiserver_argv(cp))
    assert flags["secure-port"] == "6843"
    # pods reach the API through the kubernetes Service, whose endpoint is the bridge address
    assert flags["bind-address"] == "0.0.0.0"
    assert flags["advertise-address"] == cp.gateway
    assert flags["tls-cert-file"] == str(cp.pki / "apiserver.crt")
    assert flags["tls-private-key-file"] == str(cp.pki / "apiserver.key")
    assert flags["client-ca-file"] == str(cp.pki / "ca.crt")
    assert flags["authorization-mode"] == "Node,RBAC"
    assert "NodeRestriction" in flags["enable-admission-plugins"].split(",")
    assert "disable-admission-plugins" not in flags  # the webhooks' plugins stay on by default
    assert flags["service-cluster-ip-range"] == cp.service_cidr
    assert flags["service-account-key-file"] == str(cp.pki / "sa.pub")
    assert flags["service-account-signing-key-file"] == str(cp.pki / "sa.key")


def test_apiserver_calls_webhooks_at_their_pod_ip(tmp_path: Path) -> None:
    # a Service's ClusterIP is routed for pods only (kube-proxy's rules), not for the host's API server
    assert _flags(apiserver_argv(_settings(tmp_path)))["enable-aggregator-routing"] == "true"


@pytest.mark.parametrize(
    ("argv", "binary", "port"),
    [
        (controller_manager_argv, "kube-controller-manager", "10757"),
        (scheduler_argv, "kube-scheduler", "10759"),
    ],
)
def test_controllers_reach_the_api_as_admin_without_leader_election(
    tmp_path: Path, argv, binary: str, port: str
) -> None:
    cp = _settings(tmp_path)
    command = argv(cp)
    flags = _flags(command)
    assert command[0] == str(cp.bin_dir / binary)
    for kubeconfig in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"):
        assert flags[kubeconfig] == str(cp.kubeconfig)
    assert flags["secure-port"] == port
    assert flags["leader-elect"] == "false"


def test_controller_manager_runs_every_controller_and_signs_tokens(tmp_path: Path) -> None:
    cp = _settings(tmp_path)
    flags = _flags(controller_manager_argv(cp))
    assert flags["controllers"] == "*"
    assert flags["use-service-account-credentials"] == "true"
    # tokens it signs must verify against the key the apiserver is given
    assert (
        flags["service-account-private-key-file"]
        == _flags(apiserver_argv(cp))["service-account-signing-key-file"]
    )
    assert flags["root-ca-file"] == str(cp.pki / "ca.crt")
    assert flags["service-cluster-ip-range"] == cp.service_cidr


def test_every_file_a_component_is_given_is_one_the_pki_writes(tmp_path: Path) -> None:
    cp = _settings(tmp_path)
    write_cluster_pki(cp.pki, node_name="n1", gateway=cp.gateway, service_cidr=cp.service_cidr)
    named = [
        Path(value)
        for argv in ALL_ARGV
        for value in _flags(argv(cp)).values()
        if value.startswith(str(cp.pki))
    ]
    assert {p.name for p in named} == {
        "ca.crt",
        "ca.key",  # the controller manager signs CertificateSigningRequests with it
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key",
        "sa.key",
        "sa.pub",
    }
    assert [p for p in named if not p.is_file()] == []


def test_apiserver_certificate_names_every_address_clients_use(tmp_path: Path) -> None:
    cp = _settings(tmp_path)
    write_cluster_pki(cp.pki, node_name="n1", gateway=cp.gateway, service_cidr=cp.service_cidr)
    ca = x509.load_pem_x509_certificate((cp.pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((cp.pki / "apiserver.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", cp.gateway, "10.97.0.1")
    }
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    kubelet = x509.load_pem_x509_certificate((cp.pki / "kubelet.crt").read_bytes())
    assert kubelet.subject.rfc4514_string() == "O=system:nodes,CN=system:node:n1"
    assert oct((cp.pki / "ca.key").stat().st_mode & 0o777) == "0o600"
