"""A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, Apache-2.0).

`weed` is built from its Go module by e2e/s3store/build.sh into
`${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/seaweedfs/<input hash>/bin/weed` (`make s3store-build`, part of
what `make test` prepares; cold build time: docs/testing.md). Each server gets its own data directory and
free ports on 127.0.0.1 (master, volume, filer and S3 gateway, each with its gRPC port) and two identities
from an S3 identities file: a read-write one and a read-only one (for the access-denied paths). The client
side is the project's own: obstore through fsspec, configured only through AWS_* environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.server_process import free_port, log_tail, stop_group

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "e2e" / "s3store" / "build.sh"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    read_only_access_key: str
    read_only_secret_key: str
    bucket: str  # created empty at start
    log: Path  # the server's log

    def env(self, *, read_only: bool = False) -> dict[str, str]:
        """The environment a client needs (what a Kubernetes Secret would carry)."""
        return {
            "AWS_ACCESS_KEY_ID": self.read_only_access_key if read_only else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.read_only_secret_key if read_only else self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",  # the test server speaks plain HTTP; real stores use HTTPS
        }


def weed_binary() -> Path:
    """The cached `weed`, building it first when missing (minutes cold, a hash check when cached)."""
    out = subprocess.run(
        [str(BUILD), "build"], check=True, capture_output=True, text=True, timeout=3600
    ).stdout
    return Path(out.strip().splitlines()[-1]) / "weed"


@contextmanager
def s3_server(
    directory: Path, *, bucket: str = "kubetune-test", host: str = "127.0.0.1", timeout: float = 120.0
):
    """Yields an S3Server whose data lives in `directory`, listening on `host` (the e2e tests use the local
    cluster's bridge address, which pods reach); stops it (and its process group) after."""
    weed = weed_binary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    server = S3Server(
        endpoint="",
        access_key="kubetune-rw",
        secret_key=os.urandom(12).hex(),
        read_only_access_key="kubetune-ro",
        read_only_secret_key=os.urandom(12).hex(),
        bucket=bucket,
        log=directory / "weed.log",
    )
    identities = {
        "identities": [
            {
                "name": "writer",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [
                    {"accessKey": server.read_only_access_key, "secretKey": server.read_only_secret_key}
                ],
                "actions": ["Read", "List"],
            },
        ]
    }
    config = directory / "s3-identities.json"
    config.write_text(json.dumps(identities))
    # each gRPC port is passed too (SeaweedFS would default it to port + 10000, maybe taken)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    command = [
        str(weed), "server", f"-ip={host}", f"-dir={directory / 'data'}",
        "-volume.max=4", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
        "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
    ]  # fmt: skip
    log = open(server.log, "w")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://{host}:{ports['s3']}"
    server = S3Server(**{**server.__dict__, "endpoint": endpoint})
    try:
        _wait_ready(process, server, timeout)
        yield server
    finally:
        # weed's graceful stop takes ~15 s (heartbeats, filer flush); the data is throwaway
        stop_group(process, grace=3)
        log.close()
        # weed registers unix sockets for its local gRPC (and the filer's) under /tmp, by port.
        for name, port in [*grpc.items(), ("filer", ports["filer"]), ("s3", ports["s3"])]:
            for sock in Path("/tmp").glob(f"seaweedfs-{name}-*{port}.sock"):
                sock.unlink(missing_ok=True)


def _wait_ready(process: subprocess.Popen, server: S3Server, timeout: float) -> None:
    """Until the S3 gateway answers and one object can be written to the test bucket and read back
    (SeaweedFS creates a bucket on an admin identity's first write into it)."""
    from obstore.store import S3Store

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited {process.returncode}:\n{log_tail(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/healthz", timeout=2) as response:
                response.read()
            store = S3Store(
                server.bucket,
                config={
                    "access_key_id": server.access_key,
                    "secret_access_key": server.secret_key,
                    "endpoint": server.endpoint,
                    "region": "us-east-1",
                },
                client_options={"allow_http": True},
            )
            store.put(".ready", b"ok")
            if bytes(store.get(".ready").bytes()) == b"ok":
                store.delete(".ready")
                return
        except (OSError, urllib.error.URLError) as err:
            last = f"{type(err).__name__}: {err}"
        except Exception as err:  # noqa: BLE001 - the store is still starting (obstore's errors vary)
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"weed's S3 gateway not ready in {timeout:.0f} s ({last}):\n{log_tail(server.log)}"
            )
        time.sleep(0.5)


def pytest_collection_finish(session):
    """Build `weed` before the first test when a selected test uses the store (its module imports
    s3_server): a cold build (minutes) then does not count against a test's timeout."""
    if session.config.option.collectonly:
        return
    if not any(
        getattr(getattr(item, "module", None), "s3_server", None) is s3_server for item in session.items
    ):
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(
            "s3_server: building SeaweedFS's weed from its Go module if not cached (e2e/s3store/build.sh)"
        )
    p = subprocess.run([str(BUILD), "build"], capture_output=True, text=True)
    if p.returncode != 0 and tr is not None:  # the fixture reports it again as the tests' failure
        tr.write_line(f"s3_server: build failed:\n{p.stderr[-3000:]}")
