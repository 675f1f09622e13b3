"""Which config values are remote sources (kubetune.config.sources) and which files of a hub model are
fetched (kubetune.sources.fetch.wanted_files): pure decisions, no server."""

from __future__ import annotations

import pytest
from kubetune.config import load_config
from kubetune.config.sources import HUB, Source, remote_sources, scheme_of
from kubetune.sources.fetch import wanted_files


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("meta-llama/Meta-Llama-3-8B", HUB),
        ("gpt2", HUB),
        ("s3://bucket/train.jsonl", "s3"),
        ("gs://bucket/data", "gs"),
        ("/models/llama", None),
        ("./model", None),
        ("../data/train.jsonl", None),
        ("~/model", None),
        ("data/train.jsonl", None),  # a data file's suffix: a relative path, never a hub id
        ("a/b/c", None),  # hub ids have at most one slash
    ],
)
def test_scheme_of(value, expected):
    assert scheme_of(value, check_local=False) == expected


def test_an_existing_relative_directory_is_local(tmp_path):
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    assert scheme_of("acme/tiny", tmp_path) is None
    assert scheme_of("acme/tiny", tmp_path, check_local=False) == HUB  # the operator cannot look


BASE = {
    "base_model": "acme/tiny",
    "revision_of_model": "v1",
    "tokenizer_config": "acme/tokenizer",
    "datasets": [
        {"path": "acme/colours", "type": "alpaca", "revision": "abc"},
        {"path": "/data/local.jsonl", "type": "alpaca"},
        {"path": "acme/colours", "type": "alpaca", "revision": "abc", "split": "validation"},
    ],
    "test_datasets": [{"path": "acme/eval", "type": "alpaca"}],
    "sequence_len": 128,
    "micro_batch_size": 1,
    "num_epochs": 1,
    "learning_rate": 0.001,
}


def test_remote_sources_of_a_config_and_of_its_mapping_agree(tmp_path):
    expected = [
        Source("base_model", "model", "acme/tiny", "v1"),
        # revision_of_model pins base_model's repository only
        Source("tokenizer_config", "model", "acme/tokenizer", None),
        Source("datasets[0].path", "dataset", "acme/colours", "abc"),  # the repeat entry is fetched once
        Source("test_datasets[0].path", "dataset", "acme/eval", None),
    ]
    cfg = load_config({**BASE, "output_dir": str(tmp_path / "out")})
    assert remote_sources(cfg) == expected
    assert remote_sources(BASE, check_local=False) == expected  # the operator's view


def test_the_pin_follows_a_tokenizer_from_the_base_model():
    mapping = {
        **BASE,
        "tokenizer_config": "acme/tiny",
        "datasets": BASE["datasets"][1:2],
        "test_datasets": None,
    }
    assert remote_sources(mapping, check_local=False) == [Source("base_model", "model", "acme/tiny", "v1")]


def test_a_local_config_has_no_remote_source():
    mapping = {**BASE, "base_model": "/models/tiny", "revision_of_model": None, "tokenizer_config": None,
               "datasets": BASE["datasets"][1:2], "test_datasets": None}  # fmt: skip
    assert remote_sources(mapping, check_local=False) == []


def test_object_store_uris_are_sources_of_their_scheme():
    mapping = {**BASE, "datasets": [{"path": "s3://bucket/train.jsonl", "type": "alpaca", "revision": "x"}]}
    found = remote_sources(mapping, check_local=False)
    assert Source("datasets[0].path", "dataset", "s3://bucket/train.jsonl", None, "s3") in found


def test_wanted_files_skip_duplicate_and_foreign_weights():
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
             "onnx/model.onnx", "tokenizer.json", "training_args.bin"]  # fmt: skip
    assert wanted_files("model", files) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_args.bin",
    ]
    assert wanted_files("model", ["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]
    assert wanted_files("dataset", ["data/train.bin", "x.h5"]) == ["data/train.bin", "x.h5"]


def test_a_scheme_without_a_fetcher_is_left_to_the_runs_loader(tmp_path, monkeypatch):
    from kubetune.sources.fetch import FETCHERS, fetch_sources

    monkeypatch.delitem(FETCHERS, "az", raising=False)  # every object store has one once registered

    model = tmp_path / "model"
    model.mkdir()
    cfg = load_config({**BASE, "base_model": str(model), "revision_of_model": None, "tokenizer_config": None,
                       "test_datasets": None, "output_dir": str(tmp_path / "out"),
                       "datasets": [{"path": "az://container/train.jsonl", "type": "alpaca"}]})  # fmt: skip
    reports = []
    assert fetch_sources(cfg, lambda p: reports.append(p.status())) == []
    assert reports == [{"sources": 0, "source": 0, "current": "", "filesDone": 0, "filesTotal": 0,
                        "bytesDone": 0, "bytesTotal": 0, "done": True}]  # fmt: skip


def test_fetchers_plug_in_by_scheme(tmp_path, monkeypatch):
    from kubetune.sources import fetch

    seen = []

    def fake_store(source, progress, report):  # what an object-store fetcher returns
        seen.append(source)
        progress.bytes_done += 10
        progress.bytes_total += 10
        report(progress)
        return fetch.Fetched(source, None, 1, 10, 1, str(tmp_path / "train.jsonl"))

    monkeypatch.setitem(fetch.FETCHERS, "az", fake_store)
    model = tmp_path / "model"
    model.mkdir()
    cfg = load_config({**BASE, "base_model": str(model), "revision_of_model": None, "tokenizer_config": None,
                       "test_datasets": None, "output_dir": str(tmp_path / "out"),
                       "datasets": [{"path": "az://container/train.jsonl", "type": "alpaca"}]})  # fmt: skip
    reports = []
    results = fetch.fetch_sources(cfg, lambda p: reports.append(p.status()))
    assert [r.source.uri for r in results] == ["az://container/train.jsonl"] == [s.uri for s in seen]
    assert reports[-1]["done"] is True and reports[-1]["bytesDone"] == 10 and reports[0]["sources"] == 1
