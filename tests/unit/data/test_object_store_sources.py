"""Object-store sources against a real S3 server (SeaweedFS, tests/s3_server.py), through the real
client (obstore's fsspec filesystem) configured only by AWS_* environment variables: fetch once per content, fetch
again when an object changes, prefixes, and errors that name the URI and the fix (no credential)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune.data import DataError
from kubetune.data.loading import data_fingerprint, load_rows
from kubetune.objectstore import ObjectStoreError, check_writable, describe_objects, fetch_source

from tests.s3_server import s3_server

from .conftest import entry

ROWS = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(5)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(store, monkeypatch):
    """The store with this process's environment pointing at it (read-write credentials), and a client."""
    from obstore.fsspec import FsspecStore

    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    return FsspecStore("s3", skip_instance_cache=True)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_an_object_is_fetched_once_and_again_only_when_it_changes(store, s3, tmp_path, caplog):
    s3.pipe_file(f"{store.bucket}/once/train.jsonl", jsonl(ROWS))
    uri = f"s3://{store.bucket}/once/train.jsonl"
    caplog.set_level("INFO", logger="kubetune.objectstore")

    first = fetch_source(uri, tmp_path)
    assert first.name == "train.jsonl" and first.read_bytes() == jsonl(ROWS)
    assert "fetched 1 object(s)" in caplog.text
    caplog.clear()
    assert fetch_source(uri, tmp_path) == first
    assert "using the copy" in caplog.text and "object(s)" not in caplog.text

    s3.pipe_file(f"{store.bucket}/once/train.jsonl", jsonl(ROWS[:2]))  # new content, new ETag
    second = fetch_source(uri, tmp_path)
    assert second != first and second.read_bytes() == jsonl(ROWS[:2])
    assert first.read_bytes() == jsonl(ROWS)  # the old copy is untouched (a reader may hold it)


def test_a_prefix_is_fetched_as_a_directory(store, s3, tmp_path):
    s3.pipe_file(f"{store.bucket}/prefix/a.jsonl", jsonl(ROWS[:2]))
    s3.pipe_file(f"{store.bucket}/prefix/sub/b.jsonl", jsonl(ROWS[2:]))
    objects, single = describe_objects(f"s3://{store.bucket}/prefix/")
    assert not single and [o["name"] for o in objects] == ["a.jsonl", "sub/b.jsonl"]
    local = fetch_source(f"s3://{store.bucket}/prefix", tmp_path)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "a.jsonl",
        "sub/b.jsonl",
    ]


def test_load_rows_reads_an_s3_file_and_data_files_inside_an_s3_prefix(store, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SOURCE_CACHE", str(tmp_path / "cache"))
    s3.pipe_file(f"{store.bucket}/rows/train.jsonl", jsonl(ROWS))
    s3.pipe_file(f"{store.bucket}/rows/other.jsonl", jsonl(ROWS[:1]))
    rows = load_rows(entry(path=f"s3://{store.bucket}/rows/train.jsonl"), "datasets[0]")
    assert [row["output"] for row in rows] == [row["output"] for row in ROWS]
    only = load_rows(entry(path=f"s3://{store.bucket}/rows/", data_files="other.jsonl"), "datasets[0]")
    assert len(only) == 1
    # The fingerprint (the prepared-data cache key) follows the object's ETag, without downloading.
    before = data_fingerprint(entry(path=f"s3://{store.bucket}/rows/train.jsonl"), None)
    s3.pipe_file(f"{store.bucket}/rows/train.jsonl", jsonl(ROWS[:3]))
    after = data_fingerprint(entry(path=f"s3://{store.bucket}/rows/train.jsonl"), None)
    assert before["remote"] == after["remote"] and before["objects"] != after["objects"]


def test_a_missing_object_names_the_uri_and_the_fix(store, s3, tmp_path):
    uri = f"s3://{store.bucket}/nothing/here.jsonl"
    with pytest.raises(DataError) as err:
        load_rows(entry(path=uri), "datasets[1]", tmp_path)
    (problem,) = err.value.problems
    assert problem.path == "datasets[1].path"
    assert uri in problem.message and "no such object" in problem.message
    assert "bucket and key" in problem.fix


def test_wrong_credentials_are_access_denied_without_showing_the_secret(store, s3, tmp_path, monkeypatch):
    s3.pipe_file(f"{store.bucket}/denied/train.jsonl", jsonl(ROWS))
    planted = "planted-wrong-secret-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", planted)
    uri = f"s3://{store.bucket}/denied/train.jsonl"
    with pytest.raises(ObjectStoreError) as err:
        fetch_source(uri, tmp_path)
    text = f"{err.value.message} {err.value.fix}"
    assert uri in text and "access denied" in text
    assert "AWS_ACCESS_KEY_ID" in err.value.fix and "envFrom" in err.value.fix
    assert planted not in text


def test_read_only_credentials_cannot_pass_the_output_check(store, s3, monkeypatch):
    check_writable(f"s3://{store.bucket}/results/run")  # read-write: passes, and leaves nothing behind
    assert not s3.exists(f"{store.bucket}/results/run/.kubetune-write-check")
    for name, value in store.env(read_only=True).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ObjectStoreError) as err:
        check_writable(f"s3://{store.bucket}/results/run")
    assert "access denied while trying to write" in err.value.message


def test_an_unreachable_endpoint_says_which_setting_to_check(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ObjectStoreError) as err:
        fetch_source("s3://bucket/x.jsonl", Path(tmp_path))
    assert "AWS_ENDPOINT_URL" in err.value.fix and "s3://bucket/x.jsonl" in err.value.message
