"""The fetch step for object-store sources against the real S3 server (tests/s3_server.py): the first
fetch downloads each object once under the job's source cache, a second one (another pod, a later job)
downloads nothing, the run's loader then reads that copy, and failures say whether retrying can help."""

from __future__ import annotations

import json

import pytest
from kubetune.sources import objectstore_fetch  # noqa: F401  (registers the fetcher)
from kubetune.sources.fetch import FetchError, fetch_sources

from tests.s3_server import s3_server

ROWS = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(5)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(store, monkeypatch, tmp_path):
    from obstore.fsspec import FsspecStore

    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KUBETUNE_SOURCE_CACHE", str(tmp_path / "sources"))
    return FsspecStore("s3", skip_instance_cache=True)


def config(path: str) -> dict:
    return {"base_model": "./model", "datasets": [{"path": path, "type": "alpaca"}]}


def test_an_object_store_dataset_is_fetched_once_and_the_loader_reads_that_copy(store, s3, tmp_path, caplog):
    body = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    s3.pipe_file(f"{store.bucket}/fetch/train.jsonl", body)
    uri = f"s3://{store.bucket}/fetch/train.jsonl"
    reports = []

    (first,) = fetch_sources(config(uri), reports.append)
    assert (first.files, first.bytes, first.downloaded_files) == (1, len(body), 1)
    assert first.source.key == "datasets[0].path" and reports[-1].done
    assert reports[-1].bytes_done == reports[-1].bytes_total == len(body)
    (second,) = fetch_sources(config(uri), reports.append)  # another pod of the job, or a later job
    assert second.downloaded_files == 0 and second.local_path == first.local_path

    from kubetune.config import DatasetConfig
    from kubetune.data.loading import load_rows

    caplog.set_level("INFO", logger="kubetune.objectstore")
    rows = load_rows(DatasetConfig(path=uri, type="alpaca"), "datasets[0]")
    assert len(rows) == len(ROWS) and "using the copy" in caplog.text  # no second download


def test_a_missing_object_is_a_permanent_failure_and_an_unreachable_store_a_transient_one(
    store, s3, monkeypatch
):
    with pytest.raises(FetchError) as missing:
        fetch_sources(config(f"s3://{store.bucket}/fetch/nope.jsonl"))
    assert missing.value.permanent and "datasets[0].path" in str(missing.value)
    assert "no such object" in str(missing.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(FetchError) as unreachable:
        fetch_sources(config(f"s3://{store.bucket}/fetch/train.jsonl"))
    assert not unreachable.value.permanent
