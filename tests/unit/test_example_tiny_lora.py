"""examples/tiny-lora.yml does what its comments say: make the fixture, train, generate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-lora.yml"


@pytest.mark.slow
def test_tiny_lora_example_trains_and_generates(tmp_path):
    config = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, config)  # relative paths resolve against the config's directory
    kubetune = [sys.executable, "-m", "kubetune"]
    run = dict(cwd=tmp_path.parent, capture_output=True, text=True, timeout=300)
    subprocess.run([sys.executable, "-m", "kubetune.tiny", str(tmp_path / "tiny")], check=True, **run)

    trained = subprocess.run([*kubetune, "train", str(config)], **run)
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "tiny" / "out"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 60 and (out / "KUBETUNE_COMPLETE").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    logged = [
        json.loads(line) for line in trained.stdout.splitlines() if line.startswith('{"event": "train"')
    ]
    assert logged[0]["step"] == 5 and logged[-1]["step"] == 60
    assert summary["final_train_loss"] < 0.7 * logged[0]["loss"]  # the task is learnable: loss falls >= 30%

    generated = subprocess.run(
        [*kubetune, "generate", str(config), "--prompt", "Spell the digit.", "--max-new-tokens", "4"], **run
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.strip()
