"""A real MLflow tracking server for the tests: `mlflow server` from its own virtualenv.

The server (mlflow with its web stack) is not a kubetune dependency and its pins would fight
constraints.txt, so it lives in `${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/mlflow-venv-<hash of the pinned version>`, created
on first use with `python3 -m venv` + `pip install mlflow==MLFLOW_SERVER_VERSION` (cold install time:
docs/testing.md). The training side talks to it with the mlflow-skinny client of the project's venv.
Each server gets its own SQLite backend store and artifact root, on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

MLFLOW_SERVER_VERSION = "3.17.2"  # the client in constraints.txt (mlflow-skinny) has the same version


def venv_dir() -> Path:
    key = hashlib.sha256(f"mlflow=={MLFLOW_SERVER_VERSION} {sys.version_info[:2]}".encode()).hexdigest()[:12]
    return (
        Path(os.environ.get("KUBETUNE_CACHE_DIR", Path.home() / ".cache" / "kubetune")) / f"mlflow-venv-{key}"
    )


def ensure_venv() -> Path:
    """The virtualenv's `mlflow` executable, installing it first when the venv is missing or unfinished."""
    root = venv_dir()
    mlflow = root / "bin" / "mlflow"
    if (root / ".installed").is_file() and mlflow.is_file():
        return mlflow
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run(
        [str(root / "bin" / "pip"), "install", "-q", f"mlflow=={MLFLOW_SERVER_VERSION}"],
        check=True,
        timeout=900,
    )
    (root / ".installed").write_text(MLFLOW_SERVER_VERSION)
    return mlflow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(directory: Path, *, timeout: float = 180.0):
    """Yields the tracking URI of a running server whose stores live in `directory`."""
    mlflow = ensure_venv()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(directory / "server.log", "w")  # noqa: SIM115 - closed below, after the process
    command = [
        str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination", str(directory / "artifacts"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited {process.returncode}:\n{_tail(directory)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer /health in {timeout:.0f} s:\n{_tail(directory)}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        # The server forks its web workers into the session it leads: stop that whole process group.
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        log.close()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _tail(directory: Path) -> str:
    return (directory / "server.log").read_text(errors="replace")[-3000:]
