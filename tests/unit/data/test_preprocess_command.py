"""`kubetune preprocess`, and several ranks preparing at once in separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubetune.cli import main
from kubetune.tiny import alpaca_rows, write_jsonl

SEED = Path(__file__).resolve().parents[3] / ".." / "shared" / "seed-configs" / "llama3-lora.yml"


def write_config(tmp_path, tokenizer, **overrides) -> Path:
    """The reference config with a local tokenizer, local data and a cache under tmp_path."""
    tokenizer.save_pretrained(tmp_path / "model")
    write_jsonl(alpaca_rows(64), tmp_path / "data" / "train.jsonl")
    document = yaml.safe_load(SEED.read_text())
    document |= {
        "base_model": str(tmp_path / "model"),
        "datasets": [{"path": "data/train.jsonl", "type": "alpaca"}],  # relative to the config
        "dataset_prepared_path": "prepared",
    } | overrides
    path = tmp_path / "finetune.yml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_preprocess_prepares_once_and_reports(tmp_path, tokenizer, capsys):
    config = write_config(tmp_path, tokenizer)
    assert main(["preprocess", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert Path(stats["path"]).parent == tmp_path / "prepared"
    assert stats["examples"] == 64 and stats["packing_efficiency"] > 0
    assert main(["preprocess", str(config), "--log-format", "plain"]) == 0
    out = capsys.readouterr().out
    assert f"prepared {stats['path']}" in out and "train: 64 examples" in out
    assert len(list((tmp_path / "prepared").iterdir())) == 1  # the second run reused the first
    assert main(["preprocess", str(config)]) == 0  # auto: stdout is no terminal here, so JSON
    assert json.loads(capsys.readouterr().out)["path"] == stats["path"]


def test_preprocess_prepares_a_pretraining_stream(tmp_path, tokenizer, capsys):
    # It once counted len(cfg.datasets), None with pretraining_dataset (a TypeError; found by mypy).
    write_jsonl([{"text": f"blue {k} " * 6} for k in range(200)], tmp_path / "corpus.jsonl")
    stream = {
        "datasets": None,
        "pretraining_dataset": [{"path": "corpus.jsonl", "type": "pretrain"}],
        "max_steps": 10,
        "num_epochs": None,
        "sequence_len": 32,
        "sample_packing": False,
        "pad_to_sequence_len": False,
    }
    config = write_config(tmp_path, tokenizer, **stream)
    assert main(["preprocess", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] > 0


def test_preprocess_exits_2_naming_the_dataset(tmp_path, tokenizer, capsys):
    config = write_config(tmp_path, tokenizer, datasets=[{"path": "data/missing.jsonl", "type": "alpaca"}])
    assert main(["preprocess", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets[0].path: no such file or directory" in err and "missing.jsonl" in err


COUNTING_FORMAT = """
import os
from kubetune.data.formats.instruct import Alpaca

class CountingAlpaca(Alpaca):
    def tokenize_rows(self, rows, first_index=0):
        with open(os.environ["TOKENIZED_BY"], "a") as log:
            log.write(f"{os.getpid()}\\n")
        return super().tokenize_rows(rows, first_index)
"""

RANK = """
import json, sys
from kubetune.config import load_config
from kubetune.data import load_tokenizer, prepare_datasets
cfg = load_config(sys.argv[1])
data = prepare_datasets(cfg, load_tokenizer(cfg), rank=int(sys.argv[2]), world_size=3)
print(json.dumps({"path": str(data.path), "rows": len(data.train), "first": data.train[0]["input_ids"]}))
"""


@pytest.mark.slow
def test_ranks_in_separate_processes_tokenize_once_and_load_the_same_rows(tmp_path, tokenizer):
    (tmp_path / "counting.py").write_text(COUNTING_FORMAT)
    config = write_config(
        tmp_path, tokenizer, datasets=[{"path": "data/train.jsonl", "type": "counting.CountingAlpaca"}]
    )
    env = os.environ | {"TOKENIZED_BY": str(tmp_path / "tokenized_by.log"), "KUBETUNE_PREPARE_TIMEOUT": "300"}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(config), str(rank)], env=env, stdout=subprocess.PIPE, text=True
        )
        for rank in (2, 1, 0)  # the waiting ranks start first
    ]
    outputs = [json.loads(process.communicate(timeout=300)[0]) for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0, 0]
    assert len({(o["path"], o["rows"], tuple(o["first"])) for o in outputs}) == 1
    pids = set((tmp_path / "tokenized_by.log").read_text().split())
    assert pids == {str(ranks[2].pid)}  # rank 0 alone tokenized


def test_preprocess_exits_2_when_the_tokenizer_cannot_be_loaded(tmp_path, tokenizer, capsys):
    config = write_config(tmp_path, tokenizer, base_model=str(tmp_path / "no-model-here"))
    assert main(["preprocess", str(config)]) == 2
    assert "cannot load the tokenizer" in capsys.readouterr().err


RANK_DATA = """
import hashlib, json, sys
from kubetune.config import load_config
from kubetune.data import load_tokenizer, prepare_datasets
cfg = load_config(sys.argv[1])
data = prepare_datasets(cfg, load_tokenizer(cfg), rank=int(sys.argv[2]), world_size=2)
digest = hashlib.sha256()
for split in (data.train, data.eval):
    for name in ("input_ids", "labels", "position_ids", "seq_lens"):
        digest.update(json.dumps(list(split[name])).encode())
print(json.dumps({"path": data.path, "rows": len(data.train), "digest": digest.hexdigest()}))
"""


@pytest.mark.slow
def test_skip_prepare_dataset_ranks_each_tokenize_the_same_data_and_write_no_cache(tmp_path, tokenizer):
    (tmp_path / "counting.py").write_text(COUNTING_FORMAT)
    config = write_config(
        tmp_path,
        tokenizer,
        datasets=[{"path": "data/train.jsonl", "type": "counting.CountingAlpaca"}],
        skip_prepare_dataset=True,
        val_set_size=0.1,
    )
    # PYTHONHASHSEED differs per process, so nothing in the pipeline may depend on set or hash order.
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_DATA, str(config), str(rank)],
            env=os.environ
            | {"TOKENIZED_BY": str(tmp_path / "tokenized_by.log"), "PYTHONHASHSEED": str(rank + 1)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (1, 0)  # rank 1 first: it waits for nobody
    ]
    outputs = [json.loads(process.communicate(timeout=300)[0]) for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0]
    assert outputs[0] == outputs[1] and outputs[0]["path"] is None and outputs[0]["rows"] > 0
    pids = set((tmp_path / "tokenized_by.log").read_text().split())
    assert pids == {str(process.pid) for process in ranks}  # each rank tokenized for itself
    assert not (tmp_path / "prepared").exists()


def test_preprocess_refuses_skip_prepare_dataset(tmp_path, tokenizer, capsys):
    config = write_config(tmp_path, tokenizer, skip_prepare_dataset=True)
    assert main(["preprocess", str(config)]) == 2
    err = capsys.readouterr().err
    assert "skip_prepare_dataset: true" in err and "fix: remove skip_prepare_dataset" in err
    assert not (tmp_path / "prepared").exists()
