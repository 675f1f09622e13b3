"""A real Hugging Face Hub-compatible server for the tests: olah, serving local git repositories offline.

olah (a self-hosted hub mirror, MIT) serves the git repositories under its `mirrors-path`
(`<root>/<models|datasets>/<org>/<name>`, one git repository each) through the hub's HTTP API:
`/api/<type>s/<id>/revision/<rev>`, `/api/.../tree/<rev>`, `/<id>/resolve/<rev>/<file>` with the
`X-Repo-Commit` / `ETag` headers the real `huggingface_hub` client needs; with
`[accessibility] offline = true` it never calls an upstream. Branches, tags and commit hashes are
real git refs, so a pinned revision is a real commit. Files are stored in git as they are (no LFS):
the tiny test models are a few hundred kilobytes.

Like the MLflow server (tests/mlflow_server.py), olah and its dependencies (its own
huggingface_hub, fastapi, GitPython pins) live in their own virtualenv,
`${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/olah-venv-<hash of the pinned version and Python>`, created on
first use (tests/server_process.py; cold install time: docs/testing.md).

The access log is uvicorn's, one line per request; `HubServer.downloads()` counts the file
downloads (`GET .../resolve/...`) per repository file, which is what the one-download-per-job tests
measure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.server_process import ensure_tool, free_port, log_tail, stop_group

HUB_SERVER_VERSION = "0.5.4"  # olah

# uvicorn's access line: ... "GET /acme/tiny/resolve/<rev>/config.json HTTP/1.1" 200 OK
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
RESOLVE_PATH = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)"
)
GIT = ["git", "-c", "user.name=kubetune tests", "-c", "user.email=tests@kubetune.invalid"]


def commit_repo(
    mirrors: Path, repo_type: str, repo_id: str, files_from: Path, message: str = "upload"
) -> str:
    """Commits the files of `files_from` as the new state of `<mirrors>/<repo_type>s/<repo_id>` (a git
    repository on branch main, created when missing) and returns the commit hash: a pinnable revision."""
    repo = mirrors / f"{repo_type}s" / repo_id
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for entry in repo.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(files_from, repo, dirs_exist_ok=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", message], check=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class HubServer:
    endpoint: str  # the HF_ENDPOINT of the clients
    directory: Path
    mirrors: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request served so far, in order."""
        text = self.log_path.read_text(errors="replace")
        return [(m["method"], m["path"], int(m["status"])) for m in ACCESS_LINE.finditer(text)]

    def downloads(self) -> Counter:
        """Successful file downloads (GET .../resolve/<rev>/<file>) so far, keyed by
        `<type>/<repo>/<file>` (type: models or datasets)."""
        counts: Counter = Counter()
        for method, path, status in self.requests():
            match = RESOLVE_PATH.match(path)
            if method == "GET" and match and status < 300:
                counts[f"{match['type'] or 'models'}/{match['repo']}/{match['file']}"] += 1
        return counts

    def commit(self, repo_type: str, repo_id: str, files_from: Path, message: str = "upload") -> str:
        return commit_repo(self.mirrors, repo_type, repo_id, files_from, message)


@contextmanager
def hub_server(directory: Path, *, host: str = "127.0.0.1", timeout: float = 120.0):
    """Yields a running HubServer whose repositories live in `directory/mirrors` (add them with
    `.commit(...)`, before or while it runs) and whose access log is `directory/server.log`."""
    cli = ensure_tool("olah", HUB_SERVER_VERSION, "olah-cli")
    directory.mkdir(parents=True, exist_ok=True)
    mirrors = directory / "mirrors"
    for kind in ("models", "datasets"):
        (mirrors / kind).mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    config = directory / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "{host}"\nport = {port}\n'
        f'repos-path = "{directory / "repos"}"\n'
        f'mirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    log_path = directory / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [str(cli), "--config", str(config), "--log-path", str(directory / "logs")],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = HubServer(endpoint=f"http://{host}:{port}", directory=directory, mirrors=mirrors)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"olah exited {process.returncode}:\n{log_tail(log_path)}")
            try:
                # Any answer means it listens (an unknown repository is a 401, like the real hub's).
                urllib.request.urlopen(
                    f"{server.endpoint}/api/models/kubetune/ready/revision/main", timeout=2
                )
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"olah did not answer in {timeout:.0f} s:\n{log_tail(log_path)}")
            time.sleep(0.3)
        yield server
    finally:
        stop_group(process, grace=20)
        log.close()
