"""prepare_datasets on the reference config: masking end to end, the cache key, the split, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kubetune.config import load_config
from kubetune.data import DataError, build_prepared, preparation_key, prepare_datasets
from kubetune.tiny import alpaca_rows, chat_rows, write_jsonl

from .conftest import decoded_spans
from .conftest import entry as dataset_entry

SEED = Path(__file__).resolve().parents[3] / ".." / "shared" / "seed-configs" / "llama3-lora.yml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    write_jsonl(alpaca_rows(120, seed=1), out / "alpaca.jsonl")
    write_jsonl(chat_rows(60, seed=2), out / "chat.jsonl")
    return out


def config(tmp_path, data_dir, **overrides):
    """The reference config as written, with local data and a temporary cache in place of the hub."""
    values = {
        "base_model": str(tmp_path / "model"),
        "datasets": [{"path": str(data_dir / "alpaca.jsonl"), "type": "alpaca"}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }
    return load_config(SEED, overrides=values | overrides)


def examples_of(dataset):
    """Every packed example as (input_ids, labels), split by seq_lens."""
    out = []
    for row in dataset:
        cuts = np.cumsum(row["seq_lens"])[:-1]
        positions = np.split(np.array(row["position_ids"]), cuts)
        assert all(np.array_equal(p, np.arange(len(p))) for p in positions)  # restart per example
        out += list(
            zip(
                np.split(np.array(row["input_ids"]), cuts),
                np.split(np.array(row["labels"]), cuts),
                strict=True,
            )
        )
    return out


def test_reference_config_prepares_packed_rows_with_exact_masks(tmp_path, data_dir, tokenizer):
    cfg = config(tmp_path, data_dir)
    assert cfg.sample_packing and cfg.sequence_len == 2048
    data = prepare_datasets(cfg, tokenizer)
    assert data.eval is None and data.path.parent == tmp_path / "prepared"
    assert data.stats["examples"] == 120 and data.stats["packed_rows"] == len(data.train)
    assert all(len(row["input_ids"]) <= 2048 for row in data.train)
    expected = sorted(row["output"] + "</s>" for row in alpaca_rows(120, seed=1))
    decoded = sorted(decoded_spans(tokenizer, labels.tolist())[0] for _, labels in examples_of(data.train))
    assert decoded == expected


def test_the_cache_is_reused_and_keyed_by_what_changes_tokens(tmp_path, data_dir, tokenizer):
    import copy

    cfg = config(tmp_path, data_dir)
    first = prepare_datasets(cfg, tokenizer)
    assert prepare_datasets(cfg, tokenizer).path == first.path
    key = preparation_key(cfg, tokenizer)
    assert preparation_key(config(tmp_path, data_dir, learning_rate=0.1, lora_r=8), tokenizer) == key
    assert preparation_key(config(tmp_path, data_dir, sequence_len=1024), tokenizer) != key
    assert preparation_key(config(tmp_path, data_dir, train_on_inputs=True), tokenizer) != key
    other_tokenizer = copy.deepcopy(tokenizer)
    other_tokenizer.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    assert preparation_key(cfg, other_tokenizer) != key
    edited = tmp_path / "edited.jsonl"
    write_jsonl(alpaca_rows(120, seed=1)[:-1], edited)
    assert (
        preparation_key(
            config(tmp_path, data_dir, datasets=[{"path": str(edited), "type": "alpaca"}]), tokenizer
        )
        != key
    )


def test_validation_split_is_deterministic_by_seed(tmp_path, data_dir, tokenizer):
    def eval_inputs(**overrides):
        data = build_prepared(config(tmp_path, data_dir, **overrides), tokenizer)
        return sorted(tuple(ids.tolist()) for ids, _ in examples_of(data.eval)), data

    first, data = eval_inputs(val_set_size=0.1, seed=7)
    assert len(first) == 12 and data.stats["examples"] == 108 and data.stats["eval"]["examples"] == 12
    assert eval_inputs(val_set_size=0.1, seed=7)[0] == first
    assert eval_inputs(val_set_size=0.1, seed=8)[0] != first
    assert eval_inputs(val_set_size=0.1, seed=0)[0] != eval_inputs(val_set_size=0.1, seed=42)[0]
    assert len(eval_inputs(val_set_size=5, seed=7)[0]) == 5  # a whole number is a count


def test_test_datasets_and_mixed_formats_unpacked(tmp_path, data_dir, tokenizer):
    cfg = config(
        tmp_path,
        data_dir,
        sample_packing=False,
        datasets=[
            {"path": str(data_dir / "alpaca.jsonl"), "type": "alpaca"},
            {"path": str(data_dir / "chat.jsonl"), "type": "chat_template"},
        ],
        test_datasets=[
            {"path": str(data_dir / "chat.jsonl"), "type": "chat_template", "split": "train[:10]"}
        ],
    )
    data = build_prepared(cfg, tokenizer)
    assert (
        data.stats["examples"] == 180 and len(data.train) == 180 and data.stats["packing_efficiency"] is None
    )
    assert "seq_lens" not in data.train.column_names
    assert len(data.eval) == 10
    for row in data.eval:
        assert row["position_ids"] == list(range(len(row["input_ids"])))
        assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    answers = {row["messages"][-1]["content"] + "<|im_end|>" for row in chat_rows(60, seed=2)[:10]}
    assert {decoded_spans(tokenizer, row["labels"])[0] for row in data.eval} <= answers


def test_too_long_and_untrained_examples_are_dropped_and_counted(tmp_path, tokenizer):
    rows = [{"text": "red " * n} for n in (3, 200)] + [{"text": ""}]
    write_jsonl(rows, tmp_path / "text.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        sequence_len=64,
        datasets=[{"path": str(tmp_path / "text.jsonl"), "type": "completion"}],
    )
    data = build_prepared(cfg, tokenizer)
    assert (data.stats["examples"], data.stats["dropped_too_long"]) == (2, 1)  # "" still trains its eos
    assert data.stats["dropped_too_short"] == 0


def test_min_sample_len_drops_the_short_examples(tmp_path, tokenizer):
    rows = [{"text": "red " * n} for n in (1, 2, 20)]  # a few tokens, a few, more than 20
    write_jsonl(rows, tmp_path / "text.jsonl")
    datasets = [{"path": str(tmp_path / "text.jsonl"), "type": "completion"}]
    for min_len, kept in ((None, 3), (12, 1)):
        cfg = config(tmp_path, tmp_path, sequence_len=64, min_sample_len=min_len, datasets=datasets)
        data = build_prepared(cfg, tokenizer)
        assert (data.stats["examples"], data.stats["dropped_too_short"]) == (kept, 3 - kept)


def test_dataset_exact_deduplication_drops_repeated_examples_and_eval_copies_of_training_ones(
    tmp_path, tokenizer
):
    rows = [{"text": f"red {word} blue"} for word in ("a", "b", "a", "c", "a", "b")]  # 3 distinct
    write_jsonl(rows, tmp_path / "train.jsonl")
    write_jsonl([{"text": "red c blue"}, {"text": "red d blue"}], tmp_path / "test.jsonl")
    datasets = [{"path": str(tmp_path / "train.jsonl"), "type": "completion"}]
    test_datasets = [{"path": str(tmp_path / "test.jsonl"), "type": "completion", "split": "train"}]
    keys = {"sequence_len": 64, "sample_packing": False, "datasets": datasets, "test_datasets": test_datasets}
    kept = build_prepared(config(tmp_path, tmp_path, **keys), tokenizer)
    assert (len(kept.train), len(kept.eval), kept.stats["dropped_duplicates"]) == (6, 2, 0)
    cfg = config(tmp_path, tmp_path, dataset_exact_deduplication=True, **keys)
    data = build_prepared(cfg, tokenizer)
    texts = sorted(tokenizer.decode(row["input_ids"], skip_special_tokens=True) for row in data.train)
    assert [text.replace(" ", "") for text in texts] == ["redablue", "redbblue", "redcblue"]
    # "red c blue" is a training example: only "red d blue" is left to evaluate on
    assert len(data.eval) == 1 and data.stats["dropped_duplicates"] == 3 + 1
    assert preparation_key(cfg, tokenizer) != preparation_key(config(tmp_path, tmp_path, **keys), tokenizer)


@pytest.mark.parametrize("val_set_size", [0.05, 0])
def test_every_example_too_long_blames_sequence_len_not_val_set_size(tmp_path, tokenizer, val_set_size):
    # The newcomer's report: 600 alpaca rows all longer than sequence_len used to stop at val_set_size.
    rows = [{"instruction": "say " + "red " * 100, "input": "", "output": "blue " * 80} for _ in range(600)]
    write_jsonl(rows, tmp_path / "long.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        sequence_len=128,
        val_set_size=val_set_size,
        datasets=[{"path": str(tmp_path / "long.jsonl"), "type": "alpaca"}],
    )
    with pytest.raises(DataError) as caught:
        build_prepared(cfg, tokenizer)
    (problem,) = caught.value.problems
    assert problem.path == "sequence_len"
    assert (
        "all 600 examples of datasets[0] were dropped: 600 are longer than sequence_len 128"
        in problem.message
    )
    longest = int(problem.message.split("the longest has ")[1].split(")")[0])
    assert longest > 128 and f"raise sequence_len to at least {longest}" in problem.fix


def test_every_example_untrained_blames_the_dataset(tmp_path, tokenizer):
    rows = [{"instruction": "say red", "input": "", "output": "red"} for _ in range(20)]
    write_jsonl(rows, tmp_path / "rows.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        val_set_size=0.1,
        datasets=[{"path": str(tmp_path / "rows.jsonl"), "type": "alpaca"}],
        test_datasets=None,
    )
    from kubetune.data import pipeline

    untrained = pipeline.nothing_left_error(
        [
            {
                "dataset": "datasets[0]",
                "rows": 20,
                "dropped_too_long": 0,
                "dropped_untrained": 20,
                "longest_example": 9,
            }
        ],
        128,
    )
    (problem,) = untrained.problems
    assert problem.path == "datasets[0]" and "20 have no trained token" in problem.message
    assert "train_on_inputs" in problem.fix
    # and a dataset that keeps examples still trains: the rule only fires when nothing is left
    assert build_prepared(cfg, tokenizer).stats["examples"] == 18


def test_test_datasets_with_nothing_left_blame_sequence_len(tmp_path, tokenizer):
    write_jsonl([{"text": "red " * 3}] * 8, tmp_path / "short.jsonl")
    write_jsonl([{"text": "red " * 300}] * 4, tmp_path / "long.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        sequence_len=64,
        datasets=[{"path": str(tmp_path / "short.jsonl"), "type": "completion"}],
        test_datasets=[{"path": str(tmp_path / "long.jsonl"), "type": "completion"}],
    )
    with pytest.raises(DataError) as caught:
        build_prepared(cfg, tokenizer)
    (problem,) = caught.value.problems
    assert (
        problem.path == "sequence_len"
        and "all 4 examples of test_datasets[0] were dropped" in problem.message
    )


@pytest.mark.parametrize("writer", ["json", "parquet", "csv", "saved", "directory"])
def test_local_file_kinds(tmp_path, tokenizer, writer):
    import datasets

    rows = alpaca_rows(12, seed=3)
    table = datasets.Dataset.from_list(rows)
    entry = {"type": "alpaca"}
    if writer == "json":  # a JSON array, not JSON lines
        (tmp_path / "rows.json").write_text(json.dumps(rows))
        entry["path"] = str(tmp_path / "rows.json")
    elif writer == "parquet":
        table.to_parquet(tmp_path / "rows.parquet")
        entry["path"] = str(tmp_path / "rows.parquet")
    elif writer == "csv":
        table.to_csv(tmp_path / "rows.csv", index=False)
        entry["path"] = str(tmp_path / "rows.csv")
    elif writer == "saved":
        datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "saved")
        entry["path"] = str(tmp_path / "saved")
    else:
        write_jsonl(rows[:6], tmp_path / "dir" / "a.jsonl")
        write_jsonl(rows[6:], tmp_path / "dir" / "b.jsonl")
        write_jsonl(alpaca_rows(50, seed=9), tmp_path / "dir" / "ignored.jsonl")
        entry |= {"path": str(tmp_path / "dir"), "data_files": ["a.jsonl", "b.jsonl"]}
    data = build_prepared(config(tmp_path, tmp_path, datasets=[entry]), tokenizer)
    assert data.stats["examples"] == 12
    expected = sorted(row["output"] + "</s>" for row in rows)
    assert (
        sorted(decoded_spans(tokenizer, labels.tolist())[0] for _, labels in examples_of(data.train))
        == expected
    )


def test_pretokenized_parquet(tmp_path, tokenizer):
    import datasets

    rows = [{"input_ids": [1, 40, 41, 42], "labels": [-100, -100, 41, 42]}, {"input_ids": [1, 50, 51]}]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "tokens.parquet")
    # An empty type reads tokenized rows too (Axolotl: "leave empty to load pre-tokenized").
    for type_name in ("pretokenized", None):
        entry = {"path": str(tmp_path / "tokens.parquet"), "type": type_name}
        data = build_prepared(config(tmp_path, tmp_path, datasets=[entry], sample_packing=False), tokenizer)
        assert sorted((row["input_ids"], row["labels"]) for row in data.train) == [
            ([1, 40, 41, 42], [-100, -100, 41, 42]),
            ([1, 50, 51], [-100, 50, 51]),
        ]


# -- errors name datasets[i] and say what to do ------------------------------------------------


def problem_of(cfg, tokenizer):
    with pytest.raises(DataError) as caught:
        build_prepared(cfg, tokenizer)
    (problem,) = caught.value.problems
    return problem


def test_missing_file(tmp_path, data_dir, tokenizer):
    good = {"path": str(data_dir / "alpaca.jsonl"), "type": "alpaca"}
    cfg = config(tmp_path, data_dir, datasets=[good, {"path": "nope/train.jsonl", "type": "alpaca"}])
    problem = problem_of(cfg, tokenizer)
    assert problem.path == "datasets[1].path"
    assert "no such file or directory" in problem.message and "nope/train.jsonl" in problem.message
    assert "relative paths are resolved against the config's directory" in problem.fix


def test_missing_required_column(tmp_path, tokenizer):
    write_jsonl([{"instruction": "a", "answer": "b"}], tmp_path / "rows.jsonl")
    cfg = config(tmp_path, tmp_path, datasets=[{"path": str(tmp_path / "rows.jsonl"), "type": "alpaca"}])
    problem = problem_of(cfg, tokenizer)
    assert problem.path == "datasets[0]"
    assert "no 'output' column (columns: instruction, answer)" in problem.message
    assert "field_output" in problem.fix


def test_bad_row_is_named_by_index(tmp_path, tokenizer):
    rows = alpaca_rows(5) + [{"instruction": "x", "input": "", "output": None}]
    write_jsonl(rows, tmp_path / "rows.jsonl")
    cfg = config(tmp_path, tmp_path, datasets=[{"path": str(tmp_path / "rows.jsonl"), "type": "alpaca"}])
    problem = problem_of(cfg, tokenizer)
    assert problem.path == "datasets[0]" and "row 5: field 'output' is empty" in problem.message


def test_unknown_custom_format_class(tmp_path, data_dir, tokenizer):
    (tmp_path / "formats.py").write_text("from kubetune.data.formats import PromptFormat\n")
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(SEED.read_text())
    entry = {"path": str(data_dir / "alpaca.jsonl"), "type": "formats.Missing"}
    cfg = load_config(cfg_file, overrides={"datasets": [entry], "dataset_prepared_path": str(tmp_path / "p")})
    problem = problem_of(cfg, tokenizer)
    assert problem.path == "datasets[0].type"
    assert f"module 'formats' ({tmp_path / 'formats.py'}) has no class 'Missing'" in problem.message


def test_several_processes_give_the_same_examples_and_name_a_bad_row(tokenizer):
    import datasets
    from kubetune.data.formats.instruct import Alpaca
    from kubetune.data.tokenizing import MIN_ROWS_PER_PROCESS, tokenize_dataset

    rows = alpaca_rows(2 * MIN_ROWS_PER_PROCESS + 7, seed=4)
    table = datasets.Dataset.from_list(rows)
    one = tokenize_dataset(table, Alpaca(tokenizer, {}), "datasets[0]", num_proc=1)
    two = tokenize_dataset(table, Alpaca(tokenizer, {}), "datasets[0]", num_proc=2)
    for name in ("input_ids", "labels", "offsets"):
        assert np.array_equal(getattr(one, name), getattr(two, name))
    rows[6000]["output"] = None
    with pytest.raises(DataError) as caught:
        tokenize_dataset(datasets.Dataset.from_list(rows), Alpaca(tokenizer, {}), "datasets[3]", num_proc=2)
    (problem,) = caught.value.problems
    assert problem.path == "datasets[3]" and "row 6000: field 'output' is empty" in problem.message


def test_hub_ids_go_to_the_hub_and_fail_clearly_offline(monkeypatch):
    import datasets
    from kubetune.data.loading import load_rows

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network in tests
    with pytest.raises(DataError) as caught:
        load_rows(dataset_entry(path="someone/no-such-dataset", type="alpaca"), "datasets[2]", None)
    (problem,) = caught.value.problems
    assert problem.path == "datasets[2].path"
    assert "cannot load hub dataset 'someone/no-such-dataset'" in problem.message
    assert "hub datasets need network access" in problem.fix


def test_malformed_local_file(tmp_path):
    from kubetune.data.loading import load_rows

    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(DataError) as caught:
        load_rows(dataset_entry(path=str(tmp_path / "broken.jsonl")), "datasets[0]", None)
    (problem,) = caught.value.problems
    assert (
        problem.path == "datasets[0].path" and f"cannot read {tmp_path / 'broken.jsonl'}" in problem.message
    )
    assert "one JSON object per line" in problem.fix


# -- pretraining_dataset: raw text read as a stream ---------------------------------------------


def test_a_pretraining_stream_is_read_up_to_the_tokens_max_steps_needs(tmp_path, tokenizer, caplog):
    documents = [{"text": "red " * 90}] + [{"text": f"blue {k} " * 6} for k in range(2000)]
    write_jsonl(documents, tmp_path / "corpus.jsonl")
    keys = {
        "datasets": None,
        "pretraining_dataset": [{"path": str(tmp_path / "corpus.jsonl"), "type": "pretrain"}],
        "max_steps": 120,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "sequence_len": 32,
        "sample_packing": False,
        "pad_to_sequence_len": False,
    }
    cfg = config(tmp_path, tmp_path, **keys)
    data = build_prepared(cfg, tokenizer)
    (stats,) = data.stats["datasets"]
    need = (
        120 * 2 * 1 * 32
    )  # max_steps x micro_batch_size x gradient_accumulation_steps x processes, in tokens
    # Read in batches of documents: the stream stopped after the batch that covered the need.
    assert need <= stats["streamed_tokens"] and stats["rows"] < len(documents)
    rows = [(row["input_ids"], row["labels"]) for row in data.train]
    assert len(rows) >= 200 and all(len(ids) <= 32 for ids, _ in rows)
    # Every token is trained but the first of each piece; the long document is cut, not dropped.
    assert all(labels[0] == -100 and labels[1:] == ids[1:] for ids, labels in rows)
    text = tokenizer.decode([t for ids, _ in rows for t in ids])
    assert text.count("red") == 90
    # More steps or more processes read more of the stream, and are another cache entry.
    assert preparation_key(cfg, tokenizer, world_size=2) != preparation_key(cfg, tokenizer)
    doubled = build_prepared(cfg, tokenizer, world_size=2)
    (more,) = doubled.stats["datasets"]
    assert more["streamed_tokens"] >= 2 * need and stats["rows"] < more["rows"] < len(documents)


def test_a_pretraining_stream_without_the_text_column_names_it(tmp_path, tokenizer):
    write_jsonl([{"content": "red"}], tmp_path / "corpus.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        datasets=None,
        pretraining_dataset=[{"path": str(tmp_path / "corpus.jsonl")}],
        max_steps=1,
    )
    problem = problem_of(cfg, tokenizer)
    assert problem.path == "pretraining_dataset[0].text_column" and "content" in problem.message


def test_an_unset_sequence_len_prepares_with_the_schema_default(tmp_path, data_dir, tokenizer):
    # The data package once fell back to 2048 where the schema's default is 512. No run reached that
    # fallback (every caller passes a TrainConfig, whose sequence_len is always set); now there is one
    # default. Long examples show which one was used: they are dropped at 512, kept at 2048.
    rows = [{"text": "red " * 700}] + [{"text": "red " * 3}] * 4
    write_jsonl(rows, tmp_path / "text.jsonl")
    cfg = config(
        tmp_path,
        tmp_path,
        sequence_len=None,
        sample_packing=False,
        pad_to_sequence_len=None,
        datasets=[{"path": str(tmp_path / "text.jsonl"), "type": "completion"}],
    )
    assert "sequence_len" not in cfg.model_fields_set and cfg.sequence_len == 512
    data = build_prepared(cfg, tokenizer)
    assert data.stats["sequence_len"] == 512 and data.stats["dropped_too_long"] == 1


def test_dataset_num_proc_sets_the_tokenizing_processes(tmp_path, data_dir, tokenizer, monkeypatch):
    # The pipeline once read dataset_num_proc by name from a config that had no such key (the schema
    # refused it), so the default always applied; now the key is in the schema and reaches the tokenizer.
    from kubetune.data import pipeline

    seen = []
    real = pipeline.tokenize_dataset

    def recording(rows, fmt, where, *, num_proc):
        seen.append(num_proc)
        return real(rows, fmt, where, num_proc=num_proc)

    monkeypatch.setattr(pipeline, "tokenize_dataset", recording)
    build_prepared(config(tmp_path, data_dir, dataset_num_proc=3), tokenizer)
    build_prepared(config(tmp_path, data_dir), tokenizer)
    assert seen == [3, pipeline.num_proc(None)] and 1 <= seen[1] <= 8
