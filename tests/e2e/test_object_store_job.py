"""A FineTuneJob with its model from a hub mirror, its data in object storage and its result uploaded there.

The base model is a hub id served by a real hub-compatible server (olah, tests/hub_server.py) at a
pinned commit; the dataset is an `s3://` object on a real S3 server (SeaweedFS, tests/s3_server.py);
`output_uri` names a prefix of the same bucket. Both servers listen on the local cluster's bridge
address, where the pods reach them. The credentials (HF_TOKEN, AWS_*) come from one Secret through
`envFrom`. Two workers share one cache claim: their fetch steps download each hub file and the object
once (the object under a lock: one fetch step downloads it, the other finds the copy), and the trainers
read the cached copies. After Succeeded the adapter is in the bucket and `status.outputs.uri` says so;
neither secret shows in the job's status or events.
"""

from __future__ import annotations

import json
import os

import pytest
from kubetune_operator.k8s import Kube

from tests.e2e.smoke import events, job_status
from tests.e2e.sources_job import PREFIX, bridge_address, cache_claim, run_job, sources_job
from tests.e2e.sources_job import operator as operator  # the module's fixture
from tests.hub_server import hub_server
from tests.s3_server import s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "hf_e2e_planted_token_77ab"


@pytest.fixture(scope="module")
def servers(kube_cluster, tmp_path_factory):
    if not kube_cluster.local:
        pytest.skip("the pods reach the servers on the local cluster's bridge")
    from kubetune.tiny import make_fixture

    root = tmp_path_factory.mktemp("sources")
    tiny = make_fixture(root / "tiny", examples=256, seed=0)
    with (
        hub_server(root / "hub", host=bridge_address()) as hub,
        s3_server(root / "s3", host=bridge_address()) as store,
    ):
        model = hub.commit("model", "acme/tiny", root / "tiny" / "model", "the tiny model")
        from obstore.fsspec import FsspecStore

        client = FsspecStore(
            "s3",
            config={"access_key_id": store.access_key, "secret_access_key": store.secret_key,
                    "endpoint": store.endpoint, "region": "us-east-1"},
            client_options={"allow_http": True},
            skip_instance_cache=True,
        )  # fmt: skip
        client.pipe_file(f"{store.bucket}/data/train.jsonl", open(tiny["train"], "rb").read())
        yield hub, model, store, client


def finetunejob(name: str, ns: str, hub, model: str, store) -> dict:
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "AWS_ENDPOINT_URL": store.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    sources = {
        "base_model": "acme/tiny",
        "revision_of_model": model,
        "datasets": [{"path": f"s3://{store.bucket}/data/train.jsonl", "type": "alpaca"}],
        "output_uri": f"s3://{store.bucket}/results/{name}",
    }
    return sources_job(name, ns, cache="sources-cache", secret="credentials", env=env, sources=sources)


def fetch_logs(cluster, ns: str, name: str) -> list[str]:
    """The fetch step's log of every worker pod (the local node keeps each container's log)."""
    return [
        path.read_text(errors="replace")
        for worker in (f"{name}-0", f"{name}-1")
        for path in (cluster.logs_dir / "pods").glob(f"{ns}_{worker}_*/fetch/*.log")
    ]


def test_a_job_reads_hub_and_object_store_sources_once_and_uploads_its_result(
    kube_cluster, servers, operator
):
    hub, model, store, client = servers
    kube = Kube(kube_cluster.api_client())
    ns = kube_cluster.create_namespace(prefix=PREFIX)
    try:
        secret = {"HF_TOKEN": TOKEN, "AWS_ACCESS_KEY_ID": store.access_key,
                  "AWS_SECRET_ACCESS_KEY": store.secret_key}  # fmt: skip
        kube_cluster.kubectl(
            "-n", ns, "create", "secret", "generic", "credentials",
            *(f"--from-literal={key}={value}" for key, value in secret.items()),
        )  # fmt: skip
        kube_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(cache_claim("sources-cache")))
        before = hub.downloads()

        status = run_job(kube_cluster, kube, operator, ns, finetunejob("store-1", ns, hub, model, store))
        got = hub.downloads() - before
        print(f"hub downloads (2 workers): {dict(got)}")
        assert got and set(got.values()) == {1}, got  # each model file once
        logs = fetch_logs(kube_cluster, ns, "store-1")
        assert len(logs) == 2, "expected the fetch step's log of both workers"
        # one fetch step downloaded the object; the other waited on the lock and found that copy
        assert sum(log.count("fetched 1 object(s)") for log in logs) == 1, logs
        assert sum("using the copy" in log for log in logs) == 1, logs

        uploaded = status["outputs"]["uri"]
        print(f"status.outputs.uri: {uploaded}")
        assert uploaded == f"s3://{store.bucket}/results/store-1"
        names = {os.path.basename(p) for p in client.find(f"{store.bucket}/results/store-1")}
        assert {"adapter_model.safetensors", "adapter_config.json", "training_summary.json"} <= names, names

        shown = json.dumps(job_status(kube, ns, "store-1")) + json.dumps(events(kube, ns, "store-1"))
        assert TOKEN not in shown and store.secret_key not in shown
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
