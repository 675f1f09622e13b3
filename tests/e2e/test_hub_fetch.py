"""A FineTuneJob whose model and dataset come from a hub mirror trains for real, downloading each file once.

A real hub-compatible server (olah, tests/hub_server.py) serves the tiny model and an alpaca dataset,
each at a pinned commit, on the local cluster's bridge address (the pods' own network reaches it
there). The job names them by hub id with `revision_of_model` / `revision`, `HF_ENDPOINT` points at
the mirror, and the token comes from a Secret through `envFrom`. Two workers share one cache claim:
their fetch steps (init containers running `kubetune fetch`) download under a lock, the trainers run
with HF_HUB_OFFLINE=1. The server's access log must show every file fetched exactly once; a second job
naming the same revisions on the same cache downloads nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest
from kubetune_operator.k8s import Kube

from tests.e2e.smoke import events, job_status
from tests.e2e.sources_job import PREFIX, bridge_address, cache_claim, run_job, sources_job
from tests.e2e.sources_job import operator as operator  # the module's fixture
from tests.hub_server import hub_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "hf_e2e_planted_token_4d1f"  # must never show in the job's status or events


@pytest.fixture(scope="module")
def hub(kube_cluster, tmp_path_factory):
    if not kube_cluster.local:
        pytest.skip("the pods reach the hub server on the local cluster's bridge")
    from kubetune.tiny import make_fixture

    root = tmp_path_factory.mktemp("hub")
    tiny = make_fixture(root / "tiny", examples=256, seed=0)
    with hub_server(root / "server", host=bridge_address()) as server:
        model = server.commit("model", "acme/tiny", root / "tiny" / "model", "the tiny model")
        data = root / "data-repo"
        data.mkdir()
        shutil.copy(tiny["train"], data / "train.jsonl")
        dataset = server.commit("dataset", "acme/colours", data, "alpaca rows")
        # Readable by the pods (uid 1000): the repositories are served by the host process only.
        yield server, model, dataset


def finetunejob(name: str, ns: str, endpoint: str, model: str, dataset: str) -> dict:
    sources = {
        "base_model": "acme/tiny",
        "revision_of_model": model,
        "datasets": [{"path": "acme/colours", "type": "alpaca", "revision": dataset}],
    }
    # both jobs' workers share the cache claim
    return sources_job(
        name, ns, cache="hub-cache", secret="hub-token", env={"HF_ENDPOINT": endpoint}, sources=sources
    )


def test_a_job_from_the_hub_mirror_fetches_each_file_once(kube_cluster, hub, operator):
    server, model, dataset = hub
    kube = Kube(kube_cluster.api_client())
    ns = kube_cluster.create_namespace(prefix=PREFIX)
    try:
        kube_cluster.kubectl(
            "-n", ns, "create", "secret", "generic", "hub-token", f"--from-literal=HF_TOKEN={TOKEN}"
        )
        kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(cache_claim("hub-cache")))
        files = {
            f"models/acme/tiny/{p.name}"
            for p in (server.mirrors / "models/acme/tiny").iterdir()
            if p.name != ".git"
        }
        files.add("datasets/acme/colours/train.jsonl")
        before = server.downloads()

        first = run_job(
            kube_cluster, kube, operator, ns, finetunejob("hub-1", ns, server.endpoint, model, dataset)
        )
        got = server.downloads() - before
        print(f"downloads by job 1 (2 workers): {dict(got)}")
        assert set(got) == files and set(got.values()) == {1}, got
        assert (
            first["fetch"]["done"] is True
            and first["fetch"]["bytesDone"] == first["fetch"]["bytesTotal"] > 500_000
        )
        row = kube_cluster.kubectl("-n", ns, "get", "ftj", "hub-1").stdout
        print(row)
        assert first["fetch"]["fetched"] in row  # the Fetched column

        resolves = len(server.requests())
        second = run_job(
            kube_cluster, kube, operator, ns, finetunejob("hub-2", ns, server.endpoint, model, dataset)
        )
        assert server.downloads() - before == got, "the second job downloaded again"
        assert server.requests()[resolves:] == [], "pinned and cached: the second job never asks the hub"
        assert second["fetch"]["done"] is True

        shown = json.dumps([job_status(kube, ns, n) for n in ("hub-1", "hub-2")]) + json.dumps(
            events(kube, ns, "hub-1") + events(kube, ns, "hub-2")
        )
        assert TOKEN not in shown
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
