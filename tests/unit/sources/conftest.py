"""A real hub-compatible server (olah, tests/hub_server.py) serving the tiny model at two revisions and
a dataset, for the fetch tests; the clients run in fresh processes (huggingface_hub fixes its
endpoint and cache location at import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hub_server import HubServer, hub_server

MODEL, DATASET = "acme/tiny", "acme/colours"


@dataclass
class Hub:
    server: HubServer
    v1: str  # the tiny model as kubetune.tiny makes it
    v2: str  # main: one hidden layer fewer
    data: str  # the dataset's commit
    root: Path

    def env(self, hf_home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        return {**env, "HF_ENDPOINT": self.server.endpoint, "HF_HOME": str(hf_home), **extra}

    def fetch(self, config: Path, hf_home: Path, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kubetune", "fetch", str(config)],
            env=self.env(hf_home, **extra),
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Hub:
    from kubetune.tiny import make_fixture

    root = tmp_path_factory.mktemp("hub")
    tiny = make_fixture(root / "tiny", examples=64, seed=0)
    with hub_server(root / "server") as server:
        v1 = server.commit("model", MODEL, Path(tiny["model"]), "the tiny model")
        v2_files = root / "v2"
        shutil.copytree(tiny["model"], v2_files)
        config = json.loads((v2_files / "config.json").read_text())
        config["num_hidden_layers"] -= 1
        (v2_files / "config.json").write_text(json.dumps(config))
        v2 = server.commit("model", MODEL, v2_files, "one layer fewer")
        data_files = root / "data-repo"
        data_files.mkdir()
        shutil.copy(tiny["train"], data_files / "train.jsonl")
        data = server.commit("dataset", DATASET, data_files, "alpaca rows")
        yield Hub(server, v1, v2, data, root)


def write_config(path: Path, **keys) -> Path:
    import yaml

    mapping = {
        "base_model": MODEL,
        "datasets": [{"path": DATASET, "type": "alpaca"}],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "num_epochs": 1,
        "learning_rate": 0.001,
        "output_dir": str(path.parent / "out"),
        **keys,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path
