"""YAML loading, overlays, overrides, the canonical mapping and its hash."""

import json

import pytest
import yaml
from kubetune.config import ConfigError, ConfigProblem, TrainConfig, load_config, validate_mapping

from .conftest import BASE, OVERLAYS


def _write(tmp_path, text, name="config.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(source, **kwargs) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(source, **kwargs)
    return caught.value.problems


def test_duplicate_keys_are_an_error_at_any_level(tmp_path):
    text = BASE.read_text() + "learning_rate: 0.001\n"
    text = text.replace("    type: alpaca\n", "    type: alpaca\n    type: completion\n")
    problems = _problems(_write(tmp_path, text))
    paths = {p.path: p for p in problems}
    assert set(paths) == {"learning_rate", "datasets[0].type"}
    assert "duplicate key 'learning_rate' (lines" in paths["learning_rate"].message


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = _write(tmp_path, "base_model: x\ndatasets:\n  - path: a\n   type: alpaca\n")
    (problem,) = _problems(path)
    assert problem.path == ""
    assert "YAML syntax error at line 4, column" in problem.message


def test_tab_indentation_is_a_clean_problem(tmp_path):
    (problem,) = _problems(_write(tmp_path, "base_model: x\n\tlearning_rate: 1\n"))
    assert "line 2" in problem.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_non_mapping_top_level_is_a_clean_problem(tmp_path, text):
    (problem,) = _problems(_write(tmp_path, text))
    assert problem.path == "" and "must be a mapping" in problem.message


def test_missing_file_is_a_clean_problem(tmp_path):
    (problem,) = _problems(tmp_path / "nope.yml")
    assert "not found" in problem.message


def test_error_report_is_one_screen_with_paths_and_fixes(tmp_path):
    path = _write(tmp_path, BASE.read_text() + "optimizer: adam\nlogging_steps: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    report = str(caught.value)
    assert report.splitlines()[0] == f"{path}: 2 config problems"
    assert "optimizer:" in report and "logging_steps:" in report and report.count("fix:") == 2
    assert isinstance(caught.value, ValueError)


def test_overlays_apply_in_order_and_replace_top_level_keys(tmp_path):
    first = _write(tmp_path, "lora_r: 4\nlora_target_modules: [q_proj]\n", "first.yml")
    second = _write(tmp_path, "lora_r: 32\n", "second.yml")
    cfg = load_config(BASE, overlays=[first, second])
    assert cfg.lora_r == 32 and cfg.lora_target_modules == ["q_proj"]
    mapping_overlay = {"datasets": [{"path": "local.jsonl", "type": "completion"}]}
    assert load_config(BASE, overlays=[mapping_overlay]).datasets[0].path == "local.jsonl"


def test_overlay_problems_are_reported(tmp_path):
    bad = _write(tmp_path, "a: 1\na: 2\n", "bad.yml")
    problems = _problems(BASE, overlays=[bad])
    assert any("duplicate key 'a'" in p.message and "bad.yml" in p.message for p in problems)
    assert any(p.path == "a" and "unknown key" in p.message for p in problems)


def test_overrides_replace_top_level_and_dotted_keys():
    cfg = load_config(
        BASE,
        overlays=[OVERLAYS["mistral-qlora-fsdp"]],
        overrides={
            "output_dir": "/data/out",
            "fsdp_config.fsdp_version": 2,
            "fsdp_config.fsdp_offload_params": None,
            "optimizer": "adamw_torch_fused",  # bitsandbytes' 8-bit states cannot hold FSDP2 shards
        },
    )
    assert cfg.output_dir == "/data/out"
    assert cfg.fsdp_config.fsdp_version == 2 and cfg.optimizer == "adamw_torch_fused"
    assert cfg.fsdp_config.fsdp_offload_params is None  # null = not set
    assert cfg.fsdp_config.fsdp_transformer_layer_cls_to_wrap == "MistralDecoderLayer"


def test_to_mapping_round_trips_and_is_yaml_serialisable():
    for overlays in ([], [OVERLAYS["mistral-qlora-fsdp"]]):
        cfg = load_config(BASE, overlays=overlays)
        mapping = cfg.to_mapping()
        again = load_config(yaml.safe_load(yaml.safe_dump(mapping)))
        assert again.model_dump() == cfg.model_dump()
        assert again.to_mapping() == mapping
        assert again.config_hash() == cfg.config_hash()


def test_config_hash_is_stable_and_sensitive(seed_mapping):
    cfg = load_config(seed_mapping)
    reordered = dict(reversed(list(seed_mapping.items())))
    assert load_config(reordered).config_hash() == cfg.config_hash()
    assert load_config({**seed_mapping, "learning_rate": "2e-4"}).config_hash() == cfg.config_hash()
    assert load_config({**seed_mapping, "learning_rate": 3e-4}).config_hash() != cfg.config_hash()
    assert len(cfg.config_hash()) == 64
    assert json.loads(json.dumps(cfg.to_mapping())) == cfg.to_mapping()


def test_config_is_frozen(seed_mapping):
    cfg = load_config(seed_mapping)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.learning_rate = 1.0
    assert isinstance(cfg, TrainConfig) and cfg.source_dir is None


def test_relative_paths_resolve_against_the_config_directory(tmp_path):
    path = _write(tmp_path, BASE.read_text())
    cfg = load_config(path)
    assert cfg.source_dir == tmp_path.resolve()
    assert cfg.resolve_path(cfg.output_dir) == tmp_path.resolve() / "outputs" / "llama3-lora"
    assert cfg.resolve_path("/abs/dir") == type(tmp_path)("/abs/dir")


def test_deepspeed_file_is_checked_relative_to_the_config(tmp_path):
    text = BASE.read_text() + "deepspeed: ds/zero3.json\n"
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    assert problem.path == "deepspeed" and str(tmp_path.resolve() / "ds" / "zero3.json") in problem.message
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "zero3.json").write_text("{not json")
    (problem,) = _problems(path)
    assert "not valid JSON" in problem.message
    (tmp_path / "ds" / "zero3.json").write_text('{"zero_optimization": {"stage": 3}}')
    assert load_config(path).deepspeed == "ds/zero3.json"


def test_deepspeed_inline_mapping_is_accepted(seed_mapping):
    cfg = load_config({**seed_mapping, "deepspeed": {"zero_optimization": {"stage": 2}}})
    assert cfg.deepspeed == {"zero_optimization": {"stage": 2}}


@pytest.mark.parametrize("owned", ["optimizer", "scheduler"])
def test_a_deepspeed_config_with_its_own_optimizer_is_refused(seed_mapping, tmp_path, owned):
    """kubetune builds the optimizer and schedule from the config; DeepSpeed's own would replace them."""
    inline = {"zero_optimization": {"stage": 2}, owned: {"type": "AdamW"}}
    (problem,) = validate_mapping({**seed_mapping, "deepspeed": inline})
    assert problem.path == "deepspeed" and f"defines its own {owned}" in problem.message
    (tmp_path / "ds.json").write_text(json.dumps(inline))
    (problem,) = validate_mapping({**seed_mapping, "deepspeed": "ds.json"}, source_dir=tmp_path)
    assert problem.path == "deepspeed" and f"defines its own {owned}" in problem.message


def test_yaml_1_1_scientific_notation_string_is_a_number(tmp_path):
    cfg = load_config(_write(tmp_path, BASE.read_text().replace("0.0002", "2e-4")))
    assert cfg.learning_rate == pytest.approx(2e-4)


def test_validate_mapping_never_raises_on_non_mappings():
    for value in (None, [], "text", 3, object()):
        (problem,) = validate_mapping(value)  # type: ignore[arg-type]
        assert problem.path == "" and "must be a mapping" in problem.message
