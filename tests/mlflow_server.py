"""A real MLflow tracking server for the tests: `mlflow server` from its own virtualenv.

The server (mlflow with its web stack) is not a kubetune dependency and its pins would fight
constraints.txt, so it lives in `${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/mlflow-venv-<hash of the pinned version>`, created
on first use with `python3 -m venv` + `pip install mlflow==MLFLOW_SERVER_VERSION` (tests/server_process.py;
cold install time: docs/testing.md). The training side talks to it with the mlflow-skinny client of the project's venv.
Each server gets its own SQLite backend store and artifact root, on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.server_process import ensure_tool, free_port, log_tail, stop_group

MLFLOW_SERVER_VERSION = "3.17.2"  # the client in constraints.txt (mlflow-skinny) has the same version


@contextmanager
def mlflow_server(directory: Path, *, timeout: float = 180.0):
    """Yields the tracking URI of a running server whose stores live in `directory`."""
    mlflow = ensure_tool("mlflow", MLFLOW_SERVER_VERSION, "mlflow")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below, after the process
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
                raise RuntimeError(f"mlflow server exited {process.returncode}:\n{log_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer /health in {timeout:.0f} s:\n{log_tail(log_path)}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        # The server forks its web workers into the session it leads: stop that whole process group.
        stop_group(process, grace=20)
        log.close()
