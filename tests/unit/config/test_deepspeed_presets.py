"""`deepspeed: deepspeed_configs/<name>.json` (Axolotl's examples) resolves to kubetune's own presets."""

import json

from kubetune.config import validate_mapping
from kubetune.config.deepspeed_presets import preset_for, preset_names, resolve_deepspeed_path

BASE = {
    "base_model": "m",
    "learning_rate": 1e-4,
    "num_epochs": 1,
    "datasets": [{"path": "d", "type": "alpaca"}],
}
NAMES = ["zero1", "zero2", "zero3", "zero3_bf16", "zero3_bf16_cpuoffload_all", "zero3_bf16_cpuoffload_params"]


def test_the_presets_are_deepspeed_configs_kubetune_fills_in():
    assert preset_names() == NAMES
    for name in NAMES:
        ds = json.loads(preset_for(f"deepspeed_configs/{name}.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(name[4])
        assert "optimizer" not in ds and "scheduler" not in ds  # kubetune builds both from the config
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"


def test_axolotl_paths_validate_with_and_without_a_config_directory(tmp_path):
    for name in NAMES:
        mapping = {**BASE, "deepspeed": f"deepspeed_configs/{name}.json"}
        assert validate_mapping(mapping, source_dir=tmp_path) == []
        assert validate_mapping(mapping) == []  # the webhook: no directory, the preset still resolves


def test_unknown_names_and_other_folders_are_still_missing_files(tmp_path):
    for value in ("deepspeed_configs/zero4.json", "configs/zero3.json", "zero3.json"):
        (problem,) = validate_mapping({**BASE, "deepspeed": value}, source_dir=tmp_path)
        assert problem.path == "deepspeed" and "deepspeed_configs/zero3.json" in problem.fix


def test_a_real_file_wins_over_the_preset(tmp_path):
    own = tmp_path / "deepspeed_configs" / "zero3.json"
    own.parent.mkdir()
    own.write_text("{}")
    assert resolve_deepspeed_path("deepspeed_configs/zero3.json", tmp_path) == own
    assert resolve_deepspeed_path("./deepspeed_configs/zero2.json", tmp_path) == preset_for(
        "deepspeed_configs/zero2.json"
    )
