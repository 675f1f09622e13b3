"""`streaming: true` and `streaming_multipack_buffer_size`: datasets read as streams, up to what max_steps needs."""

from __future__ import annotations

from kubetune.config import load_config, validate_mapping
from kubetune.data import build_prepared, preparation_key
from kubetune.tiny import write_jsonl

from tests.paths import SEED

ROWS = [{"instruction": f"say {k}", "input": "", "output": f"word {k} " * (1 + k % 5)} for k in range(3000)]
UNPACKED = {"sample_packing": False, "pad_to_sequence_len": False, "val_set_size": 0}
STEPS = {"max_steps": 5, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "num_epochs": None}


def config(tmp_path, path, **overrides):
    values = {
        "base_model": str(tmp_path / "model"),
        "datasets": [{"path": str(path), "type": "alpaca"}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        **STEPS,
    }
    return load_config(SEED, overrides=values | overrides)


def examples(data) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return sorted((tuple(row["input_ids"]), tuple(row["labels"])) for row in data.train)


def test_a_streamed_dataset_is_read_up_to_what_max_steps_needs_and_gives_the_same_examples(
    tmp_path, tokenizer
):
    write_jsonl(ROWS, tmp_path / "all.jsonl")
    streamed = build_prepared(config(tmp_path, tmp_path / "all.jsonl", streaming=True, **UNPACKED), tokenizer)
    (stats,) = streamed.stats["datasets"]
    # 5 steps x 2 rows need 10 examples: one batch of rows (256) is read, not the 3000.
    assert stats["rows"] == 256 and stats["examples"] == 256 and stats["streamed"] >= 10
    # Exactly the examples the same rows give when the file is prepared whole (the stream's first rows).
    write_jsonl(ROWS[:256], tmp_path / "head.jsonl")
    whole = build_prepared(config(tmp_path, tmp_path / "head.jsonl", **UNPACKED), tokenizer)
    assert examples(streamed) == examples(whole)
    # Packed, the need is counted in tokens: 10 rows of sequence_len tokens.
    packed = build_prepared(
        config(tmp_path, tmp_path / "all.jsonl", streaming=True, sample_packing=True, sequence_len=64),
        tokenizer,
    )
    (stats,) = packed.stats["datasets"]
    assert stats["streamed"] >= 10 * 64 and stats["rows"] < len(ROWS)
    # More processes read more of the stream: another cache entry.
    cfg = config(tmp_path, tmp_path / "all.jsonl", streaming=True, **UNPACKED)
    assert preparation_key(cfg, tokenizer, world_size=2) != preparation_key(cfg, tokenizer)


def test_the_shuffle_buffer_draws_the_rows_read_by_seed(tmp_path, tokenizer):
    write_jsonl(ROWS, tmp_path / "all.jsonl")

    def read(**keys) -> set[str]:
        cfg = config(tmp_path, tmp_path / "all.jsonl", streaming=True, **UNPACKED, **keys)
        data = build_prepared(cfg, tokenizer)
        return {tokenizer.decode(row["input_ids"]).split("say ")[1].split()[0] for row in data.train}

    in_order = read()
    assert in_order == {str(k) for k in range(256)}
    buffered = read(streaming_multipack_buffer_size=1000, seed=7)
    assert len(buffered) == 256 and max(int(k) for k in buffered) >= 256  # drawn from 1000 buffered rows
    assert read(streaming_multipack_buffer_size=1000, seed=7) == buffered
    assert read(streaming_multipack_buffer_size=1000, seed=8) != buffered
    plain = config(tmp_path, tmp_path / "all.jsonl", streaming=True, **UNPACKED)
    shuffled = config(
        tmp_path, tmp_path / "all.jsonl", streaming=True, streaming_multipack_buffer_size=1000, **UNPACKED
    )
    assert preparation_key(plain, tokenizer) != preparation_key(shuffled, tokenizer)


def test_a_pretraining_stream_is_read_through_the_shuffle_buffer(tmp_path, tokenizer):
    write_jsonl([{"text": f"blue {k} " * 6} for k in range(2000)], tmp_path / "corpus.jsonl")
    keys = {
        "datasets": None,
        "pretraining_dataset": [{"path": str(tmp_path / "corpus.jsonl")}],
        "sequence_len": 32,
    }

    def documents(**extra) -> set[str]:
        data = build_prepared(config(tmp_path, tmp_path / "x", **keys, **UNPACKED, **extra), tokenizer)
        return {
            word
            for row in data.train
            for word in tokenizer.decode(row["input_ids"]).split()
            if word.isdigit()
        }

    assert max(int(k) for k in documents()) < 300  # the stream's first documents
    assert max(int(k) for k in documents(streaming_multipack_buffer_size=1500)) >= 300


def test_streaming_keys_are_checked_against_the_rest_of_the_config():
    base = {"base_model": "m", "learning_rate": 1e-4, "datasets": [{"path": "d", "type": "alpaca"}]}
    assert (
        validate_mapping({**base, "max_steps": 5, "streaming": True, "streaming_multipack_buffer_size": 10})
        == []
    )
    (problem,) = validate_mapping({**base, "num_epochs": 1, "streaming": True})
    assert problem.path == "max_steps"
    (problem,) = validate_mapping({**base, "num_epochs": 1, "streaming_multipack_buffer_size": 10})
    assert problem.path == "streaming_multipack_buffer_size" and "streaming: true" in problem.fix
    # Axolotl's older name is the same key.
    assert (
        validate_mapping({**base, "max_steps": 5, "streaming": True, "pretrain_multipack_buffer_size": 10})
        == []
    )
    # Packed examples never attend to each other here: Axolotl's default true is accepted, false is refused.
    assert validate_mapping({**base, "num_epochs": 1, "pretrain_multipack_attn": True}) == []
    (problem,) = validate_mapping({**base, "num_epochs": 1, "pretrain_multipack_attn": False})
    assert problem.path == "pretrain_multipack_attn"
