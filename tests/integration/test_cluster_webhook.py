"""The API server calls a validating admission webhook served by a process on the host, the way
the operator's webhook runs in the integration tests."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_cluster import wait_for
from tests.unit.operator.cluster_support import write_certificates

pytestmark = pytest.mark.integration


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
    pem = write_certificates(tmp_path)  # CA for caBundle; tls.crt/tls.key for 127.0.0.1
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
