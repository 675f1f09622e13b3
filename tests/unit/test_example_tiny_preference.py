"""examples/tiny-{orpo,simpo,kto}.yml do what their comments say: `kubetune train` runs each and logs
trl's reward metrics, with the reward margin rising."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    subprocess.run(
        [sys.executable, "-m", "kubetune.tiny", str(root / "tiny"), "--examples", "256"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


@pytest.mark.parametrize("name", ["tiny-orpo.yml", "tiny-simpo.yml", "tiny-kto.yml"])
def test_the_example_validates(name):
    from kubetune.cli import main

    assert main(["validate", str(EXAMPLES / name)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-orpo.yml", "tiny-simpo.yml", "tiny-kto.yml"])
def test_the_example_trains_and_its_reward_margin_rises(fixture_dir, name):
    config = fixture_dir / name
    shutil.copy(EXAMPLES / name, config)  # relative paths resolve against the config's directory
    trained = subprocess.run(
        [sys.executable, "-m", "kubetune", "train", str(config), "--log-format", "json"],
        cwd=fixture_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")]
    train = [line for line in lines if line["event"] == "train"]
    assert train[-1]["step"] == 40
    margins = [line["rewards/margins"] for line in train]
    assert margins[-1] > margins[0], margins
    out = fixture_dir / "tiny" / f"out-{name.removeprefix('tiny-').removesuffix('.yml')}"
    assert (out / "adapter_model.safetensors").is_file()
