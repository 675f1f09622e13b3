"""The API server calls a validating admission webhook served by a process on the host, the way
the operator's webhook runs in the integration tests."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_cluster import wait_for

pytestmark = pytest.mark.integration


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-webhook")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(pem)
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return pem


class _Handler(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        _Handler.calls.append(req["operation"])
        data = (req.get("object") or {}).get("data") or {}
        allowed = "forbidden" not in data
        resp = {"uid": req["uid"], "allowed": allowed}
        if not allowed:
            resp["status"] = {"code": 422, "message": "denied by the test webhook: key 'forbidden'"}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": resp}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_validating_webhook_served_from_the_host(kube_cluster, kube_namespace, tmp_path):
    if not kube_cluster.local:
        pytest.skip("a real cluster's API server cannot call back into the test process")
    pem = _self_signed(tmp_path)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    api = kube_cluster.api_client()
    adm, core = client.AdmissionregistrationV1Api(api), client.CoreV1Api(api)
    ns = kube_namespace
    name = f"test-webhook-{ns}"
    kube_cluster.kubectl("label", "namespace", ns, f"kubetune-test-webhook={ns}")
    adm.create_validating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "configmaps.test.kubetune.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{srv.server_address[1]}/validate",
                             "caBundle": base64.b64encode(pem).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubetune-test-webhook": ns}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    })  # fmt: skip
    try:
        n = iter(range(1000))

        def denied():
            try:
                core.create_namespaced_config_map(
                    ns, {"metadata": {"name": f"bad-{next(n)}"}, "data": {"forbidden": "x"}}
                )
            except ApiException as e:
                return e
            return None  # the configuration is not active yet

        err = wait_for(denied, 30, what="the webhook to deny")
        assert "denied by the test webhook" in err.body
        core.create_namespaced_config_map(ns, {"metadata": {"name": "good"}, "data": {"fine": "x"}})
        assert "CREATE" in _Handler.calls
    finally:
        adm.delete_validating_webhook_configuration(name)
        srv.shutdown()
