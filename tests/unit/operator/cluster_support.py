"""Helpers for the operator's tests against a real cluster (integration tier and the bench).

The operator runs as a subprocess (`kubetune-operator`, the console script users run), with the
fake trainer as its launcher; its webhook, when wanted, listens on 127.0.0.1 with a certificate
from a throw-away CA, registered by a ValidatingWebhookConfiguration that only covers namespaces
carrying WEBHOOK_LABEL (other suites' jobs in the same cluster are never affected).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "finetunejob.yaml"
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
WEBHOOK_LABEL = "kubetune.dev/operator-test-webhook"
WEBHOOK_PATH = "validate-finetunejob"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_crd(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # A CRD created a moment ago may have no status.conditions yet, and `kubectl wait` then fails at once
    # ("<nil> is of the type <nil>") instead of waiting: ask again until the apiserver has written them.
    deadline = time.monotonic() + 60
    while True:
        wait = ("wait", "--for=condition=Established", "crd/finetunejobs.kubetune.dev", "--timeout=60s")
        done = cluster.kubectl(*wait, check=time.monotonic() > deadline)
        if done.returncode == 0:
            return
        time.sleep(0.5)


def write_certificates(directory: Path) -> bytes:
    """A CA and a server certificate for 127.0.0.1 (tls.crt, tls.key); returns the CA in PEM.

    Built by the local cluster's own certificate functions (e2e/cluster/pki.py)."""
    from e2e.cluster.pki import cert_pem, issue_certificate, key_pem, new_ca

    now = datetime.datetime.now(datetime.timezone.utc)
    window = {
        "not_before": now - datetime.timedelta(minutes=5),
        "not_after": now + datetime.timedelta(days=1),
    }
    ca_key, ca = new_ca("kubetune-operator-test-ca", **window)
    key, cert = issue_certificate(
        ca_key, ca, "127.0.0.1", server=True, dns=("localhost",), ips=("127.0.0.1",), **window
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert_pem(cert))
    (directory / "tls.key").write_bytes(key_pem(key))
    return cert_pem(ca)


def register_webhook(cluster, name: str, port: int, ca_pem: bytes) -> None:
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "finetunejobs.kubetune.dev",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/{WEBHOOK_PATH}",
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["kubetune.dev"],
                        "apiVersions": ["v1alpha1"],
                        "resources": ["finetunejobs"],
                        "operations": ["CREATE", "UPDATE"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {WEBHOOK_LABEL: "on"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(config))


class OperatorProcess:
    """`kubetune-operator` in a subprocess, with its log in a file."""

    def __init__(self, cluster, log_path: Path, namespaces: list[str], webhook_dir: Path | None = None,
                 webhook_port: int | None = None, extra_env: dict | None = None,
                 extra_args: tuple[str, ...] = (), standalone: bool = True,
                 kubeconfig: str | None = None):  # fmt: skip
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig  # another identity than the cluster admin
        self.log_path = log_path
        self.namespaces = namespaces
        self.webhook_dir = webhook_dir
        self.webhook_port = webhook_port
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.extra_env = extra_env or {}
        self.extra_args = list(extra_args)
        self.standalone = standalone
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [str(Path(sys.executable).with_name("kubetune-operator")), "--log-format", "json",
               "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
               "--shutdown-drain", "0.5"]  # fmt: skip
        if self.standalone:
            cmd.append("--standalone")
        for namespace in self.namespaces:
            cmd += ["--namespace", namespace]
        cmd += self.extra_args
        if self.webhook_dir is not None:
            cmd += ["--webhook-cert-dir", str(self.webhook_dir), "--webhook-host", "127.0.0.1",
                    "--webhook-port", str(self.webhook_port)]  # fmt: skip
        return cmd

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "KUBETUNE_OPERATOR_TORCHRUN": fake_trainer_launcher(),
            "KUBETUNE_OPERATOR_FETCH": fake_trainer_launcher("--fetch"),
            **self.extra_env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"kubetune-operator exited {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.healthy():
                return self
            time.sleep(0.2)
        raise AssertionError(f"kubetune-operator not healthy after 60 s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up (a crash, an OOM kill, a node loss)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def fake_trainer_launcher(*args: str) -> str:
    """The operator's launcher: the fake trainer, run by the image's Python, with its source in the command
    (the pods see nothing of this checkout)."""
    return shlex.join(["python", "-u", "-c", FAKE_TRAINER.read_text(), *args])


@contextlib.contextmanager
def running_operator(cluster, log_dir: Path, prefix: str):
    """The CRD installed and an operator watching the namespaces `<prefix>-*`, stopped afterwards."""
    install_crd(cluster)
    log = log_dir / "operator.log"
    process = OperatorProcess(cluster, log, namespaces=[f"{prefix}-*"]).start()
    try:
        yield process
    finally:
        process.stop()
        print(f"operator log: {log}")
