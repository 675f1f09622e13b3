"""Object-store URIs in a config: `datasets[].path` / `pretraining_dataset[].path` (s3://, gs://, az://)
and `output_uri` are accepted; other schemes, URIs without a bucket and credentials in a URI are refused
statically, at the key path, with a fix (kubetune validate and the webhook run the same check)."""

import copy

import pytest
from kubetune.config import load_config, validate_mapping
from kubetune.config.sources import bucket_and_key, is_object_store_uri, uri_scheme


def _with(base: dict, **changes) -> dict:
    config = copy.deepcopy(base)
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "path",
    [
        "s3://bucket/train.jsonl",
        "s3://bucket/prefix/",
        "gs://bucket/data",
        "gcs://b/x.parquet",
        "az://c/x.jsonl",
    ],
)
def test_object_store_dataset_paths_are_accepted(seed_mapping, path):
    config = _with(seed_mapping, datasets=[{"path": path, "type": "alpaca"}])
    assert validate_mapping(config) == []
    assert load_config(config).datasets[0].path == path


def test_gs_uri_is_an_object_store_uri_not_a_hub_id():
    # The runtime's loader asks this before anything else: gs://bucket/x no longer reaches the hub.
    assert is_object_store_uri("gs://bucket/x")
    assert not is_object_store_uri("org/dataset")
    assert not is_object_store_uri("./data/train.jsonl")
    assert uri_scheme("S3://b/k") == "s3"
    assert bucket_and_key("s3://bucket/a/b/") == ("bucket", "a/b")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("https://example.com/train.jsonl", "https://"),
        ("hdfs://namenode/data", "hdfs://"),
        ("s3:///train.jsonl", "names no bucket"),
        ("s3://AKIAX:secret@bucket/train.jsonl", "credentials"),
    ],
)
def test_bad_dataset_uris_are_refused_at_the_key_path(seed_mapping, path, message):
    problems = validate_mapping(_with(seed_mapping, datasets=[{"path": path, "type": "alpaca"}]))
    assert [p.path for p in problems] == ["datasets[0].path"]
    assert message in problems[0].message and "{" not in problems[0].message  # no unfilled template
    assert problems[0].fix
    if "secret" in path:  # the refusal must not repeat the credential it refuses
        assert "secret" not in problems[0].message + problems[0].fix


def test_pretraining_dataset_paths_take_object_store_uris_too(seed_mapping):
    base = {k: v for k, v in seed_mapping.items() if k not in ("datasets", "val_set_size")}
    good = {**base, "max_steps": 4, "pretraining_dataset": [{"path": "s3://bucket/corpus/"}]}
    assert validate_mapping(good) == []
    bad = {**good, "pretraining_dataset": [{"path": "ftp://host/corpus.txt"}]}
    assert [p.path for p in validate_mapping(bad)] == ["pretraining_dataset[0].path"]


def test_output_uri_must_be_an_object_store_uri(seed_mapping):
    assert validate_mapping(_with(seed_mapping, output_uri="s3://results/run-1")) == []
    assert (
        load_config(_with(seed_mapping, output_uri="s3://results/run-1")).output_uri == "s3://results/run-1"
    )
    for value, needle in (("/mnt/results", "must be an object-store URI"), ("ftp://h/x", "ftp://")):
        problems = validate_mapping(_with(seed_mapping, output_uri=value))
        assert [p.path for p in problems] == ["output_uri"], value
        assert needle in problems[0].message and "{" not in problems[0].message


def test_kubetune_validate_checks_the_schemes_statically(seed_mapping, tmp_path):
    """`kubetune validate` refuses a bad scheme and a path-like output_uri with exit 2, and accepts
    s3:// data and output_uri without reaching any store (no credentials in this environment)."""
    import subprocess
    import sys

    import yaml

    good = tmp_path / "good.yml"
    good.write_text(
        yaml.safe_dump(
            _with(
                seed_mapping,
                datasets=[{"path": "s3://no-such-bucket/train.jsonl", "type": "alpaca"}],
                output_uri="s3://no-such-bucket/out/",
            )
        )
    )
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            _with(seed_mapping, datasets=[{"path": "https://x/t.jsonl", "type": "alpaca"}], output_uri="/out")
        )
    )
    run = [sys.executable, "-m", "kubetune", "validate"]
    result = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "datasets[0].path" in result.stdout and "output_uri" in result.stdout
