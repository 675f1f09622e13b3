"""Certificates for the local cluster and the tests: a self-signed CA, leaf certificates it signs, PEM.

All keys are EC P-256. ``write_cluster_pki`` writes the control plane's set (CA, API server serving
certificate, admin and kubelet client certificates, the service-account key pair) into one directory;
the operator's tests use ``new_ca`` / ``issue_certificate`` for a throw-away webhook certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# What the API server's certificate must name: clients reach it as localhost and, from pods, through
# the ``kubernetes`` Service's DNS names.
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def new_ca(
    common_name: str, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """(key, certificate) of a self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    org: str | None = None,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    server: bool = False,
    client: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """(key, certificate) for a server and/or client, signed by the CA.

    Kubernetes reads the user from the common name and the groups from the organization."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        _builder(x509.Name(attrs), ca_cert.subject, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(directory: Path, name: str, key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{name}.key").write_bytes(key_pem(key))
    os.chmod(directory / f"{name}.key", 0o600)


def write_cluster_pki(directory: Path, *, node_name: str, gateway: str, service_cidr: str) -> None:
    """The control plane's CA, serving and client certificates and service-account key pair.

    Written once per state directory (a ``done`` marker): an ``up`` that restarts a half-running
    cluster keeps etcd's data, whose service-account tokens and node identities need the same keys."""
    if (directory / "done").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    # an hour back: a clock a little behind on another process must not see a certificate from the future
    not_before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    not_after = not_before + dt.timedelta(days=3650)

    ca_key, ca = new_ca("kubetune-local-ca", not_before, not_after)
    _write_key(directory, "ca", ca_key)
    (directory / "ca.crt").write_bytes(cert_pem(ca))

    def leaf(name: str, common_name: str, org: str | None = None, **usage: Any) -> None:
        key, cert = issue_certificate(
            ca_key, ca, common_name, org, not_before=not_before, not_after=not_after, **usage
        )
        _write_key(directory, name, key)
        (directory / f"{name}.crt").write_bytes(cert_pem(cert))

    # the kubernetes Service's ClusterIP is the first address of the service range
    service_ip = str(next(ipaddress.ip_network(service_cidr).hosts()))
    leaf(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns=APISERVER_DNS_NAMES,
        ips=("127.0.0.1", gateway, service_ip),
    )
    leaf("admin", "kubernetes-admin", "system:masters", client=True)
    leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", client=True)
    leaf(
        "kubelet",
        f"system:node:{node_name}",
        "system:nodes",
        server=True,
        client=True,
        dns=("localhost", node_name),
        ips=("127.0.0.1", gateway),
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(directory, "sa", sa_key)
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (directory / "done").write_text("ok\n")
