"""revision_of_model reaches every load of the base model: a real Hugging Face cache holding two revisions
of one repository (refs/main and refs/v2 point at different snapshots), read offline by the real
transformers / huggingface_hub code in a fresh process (their cache location is fixed at import)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import subprocess_env

REPO_ID = "kubetune-test/tiny"
MAIN, V2 = "a" * 40, "b" * 40

# Loads the tokenizer (data and engine paths), the config (base_model_config) and the model as a run does.
PROBE = """
import json, sys
from kubetune.config import load_config
from kubetune.data import load_tokenizer
from kubetune.train import attention, model as model_lib

cfg = load_config(json.loads(sys.argv[1]))
model_lib.check_pad_token(cfg)
tokenizer = load_tokenizer(cfg)
precision = model_lib.resolve_precision(cfg, cuda=False)
backend = attention.select_backend(cfg, cuda=False)
model = model_lib.load_model(cfg, tokenizer, precision=precision, backend=backend, device=None)
print(json.dumps({"model_max_length": tokenizer.model_max_length, "layers": model.config.num_hidden_layers,
                  "commit": model.config._commit_hash}))
"""


@pytest.fixture(scope="module")
def hub_cache(tiny, tmp_path_factory) -> Path:
    """HF_HUB_CACHE with REPO_ID at two revisions: v2 has one layer fewer and another model_max_length."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    for commit, layers_delta, max_length in ((MAIN, 0, 1000), (V2, -1, 777)):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(tiny["model"], snapshot)
        config = json.loads((snapshot / "config.json").read_text())
        config["num_hidden_layers"] += layers_delta
        (snapshot / "config.json").write_text(json.dumps(config))
        tokenizer_config = json.loads((snapshot / "tokenizer_config.json").read_text())
        tokenizer_config["model_max_length"] = max_length
        (snapshot / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(V2)
    return cache


def probe(hub_cache: Path, tiny: dict, **keys) -> dict:
    mapping = {
        "base_model": REPO_ID,
        "datasets": [{"path": tiny["train"], "type": "alpaca"}],
        "special_tokens": {"pad_token": "<pad>"},
        "learning_rate": 1e-4,
        "num_epochs": 1,
        **keys,
    }
    env = subprocess_env() | {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(mapping)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_revision_of_model_pins_model_config_and_tokenizer(hub_cache, tiny):
    layers = json.loads((Path(tiny["model"]) / "config.json").read_text())["num_hidden_layers"]
    default = probe(hub_cache, tiny)
    assert default == {"model_max_length": 1000, "layers": layers, "commit": MAIN}
    pinned = probe(hub_cache, tiny, revision_of_model="v2", base_model_config=REPO_ID)
    assert pinned == {"model_max_length": 777, "layers": layers - 1, "commit": V2}
    by_commit = probe(hub_cache, tiny, revision_of_model=V2)
    assert by_commit["commit"] == V2 and by_commit["model_max_length"] == 777


def test_revision_of_model_with_a_local_directory_is_refused(tiny):
    from kubetune.config import load_config
    from kubetune.train import model as model_lib
    from kubetune.train.errors import UserError

    cfg = load_config(
        {
            "base_model": tiny["model"],
            "revision_of_model": "v2",
            "datasets": [{"path": tiny["train"], "type": "alpaca"}],
            "learning_rate": 1e-4,
            "num_epochs": 1,
        }
    )
    with pytest.raises(UserError) as refused:
        model_lib.model_source(cfg, cfg.base_model, "base_model")
    assert refused.value.key == "revision_of_model" and "local directory" in str(refused.value)
