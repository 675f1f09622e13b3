"""Bad input stops the run before anything is written: a one-screen message with the fix, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kubetune.cli import main as cli

from .support import QLORA_FSDP_OVERLAY, tree_digest


@pytest.fixture
def populated(tmp_path) -> Path:
    """An output_dir holding an earlier run's files, which a refused run must leave as they are."""
    out = tmp_path / "run" / "out"
    checkpoint = out / "checkpoints" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.bin").write_bytes(b"state")
    (checkpoint / "COMPLETE").write_text(json.dumps({"step": 5, "files": {"optimizer.bin": 5}}))
    (out / "adapter_model.safetensors").write_bytes(b"weights of an earlier run")
    (out / "notes.txt").write_text("keep me")
    return out


def refused(path: Path, out: Path, capsys, *expected: str) -> str:
    before = tree_digest(out)
    assert cli(["train", str(path)]) == 2
    message = capsys.readouterr().err
    assert tree_digest(out) == before, "output_dir changed"
    assert not (out / "KUBETUNE_COMPLETE").exists()
    report = message[message.index("kubetune: cannot train") :]
    assert len(report.splitlines()) <= 20 and "fix:" in report
    flat = " ".join(report.split())  # the report is wrapped at 100 columns
    for text in expected:
        assert text in flat, (text, report)
    return report


def test_missing_base_model_directory(make_config, populated, capsys, tmp_path, monkeypatch):
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(termination_log))
    _, path = make_config(base_model=str(tmp_path / "models" / "missing"))
    refused(path, populated, capsys, "does not exist", "base_model")
    assert json.loads(termination_log.read_text()) | {"reason": ""} == {
        "status": "bad_input",
        "exit_code": 2,
        "reason": "",
    }


def test_tokenizer_without_a_pad_token(make_config, populated, capsys, tiny, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "no-pad"
    shutil.copytree(tiny["model"], model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token is None
    _, path = make_config(base_model=str(model_dir))
    refused(path, populated, capsys, "no pad token", 'special_tokens: {pad_token: "</s>"}')

    cfg, path = make_config(
        "fixed", base_model=str(model_dir), special_tokens={"pad_token": "</s>"}, max_steps=1
    )
    assert cli(["train", str(path)]) == 0  # the suggested fix works


def test_qlora_without_cuda(make_config, populated, capsys):
    _, path = make_config(overlay_file=QLORA_FSDP_OVERLAY, flash_attention=False)  # the seed QLoRA overlay
    refused(path, populated, capsys, "bitsandbytes", "CUDA GPU", "adapter: lora")


def test_flash_attention_without_cuda(make_config, populated, capsys):
    _, path = make_config(flash_attention=True)
    refused(path, populated, capsys, "FlashAttention", "flash_attention: false")


def test_every_example_longer_than_sequence_len(make_config, populated, capsys):
    # The newcomer's case: every row is dropped by the length rule and val_set_size is set; the report
    # names sequence_len (the real cause), not val_set_size.
    _, path = make_config(sequence_len=16, val_set_size=0.05)
    report = refused(
        path, populated, capsys, "(sequence_len)", "longer than sequence_len 16", "raise sequence_len"
    )
    assert "val_set_size" not in report


@pytest.mark.parametrize(
    ("command", "extra"), [("merge", ["--output", "merged"]), ("generate", ["--prompt", "Hi"])]
)
def test_merge_and_generate_name_their_action(make_config, capsys, command, extra):
    """A UserError is a ConfigError: the commands report it as their own refusal, not as a config's."""
    _, path = make_config(f"no-run-{command}")  # output_dir holds nothing trained yet
    assert cli([command, str(path), *extra]) == 2
    report = capsys.readouterr().err
    assert f"kubetune: cannot {command} (output_dir):" in report and "kubetune train" in report
