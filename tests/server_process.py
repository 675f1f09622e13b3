"""What the tests' real servers (tests/hub_server.py, tests/mlflow_server.py, tests/s3_server.py) share:
a pinned tool in its own cached virtualenv, a free local port, stopping a server's whole process group, and
the tail of its log for a failure message.

A tool whose pins would fight constraints.txt (mlflow's web stack, olah's own huggingface_hub) lives in
`${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/<package>-venv-<hash of the pinned version and Python>`, created
on first use with `python3 -m venv` + `pip install <package>==<version>`; `.installed` marks a finished
install, so an interrupted one is redone rather than used.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def tool_venv(package: str, version: str) -> Path:
    """The root of `package==version`'s virtualenv in the cache (it may not exist yet)."""
    key = hashlib.sha256(f"{package}=={version} {sys.version_info[:2]}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("KUBETUNE_CACHE_DIR", Path.home() / ".cache" / "kubetune"))
    return cache / f"{package}-venv-{key}"


def ensure_tool(package: str, version: str, executable: str) -> Path:
    """The path of `executable` in `package==version`'s virtualenv, installing it first when the venv is
    missing or unfinished."""
    root = tool_venv(package, version)
    path = root / "bin" / executable
    if (root / ".installed").is_file() and path.is_file():
        return path
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run(
        [str(root / "bin" / "pip"), "install", "-q", f"{package}=={version}"], check=True, timeout=900
    )
    (root / ".installed").write_text(version)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, *, grace: float) -> None:
    """SIGTERM to the process group the server leads (it may have forked workers into it), SIGKILL after
    `grace` seconds; returns once the leader has exited."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
