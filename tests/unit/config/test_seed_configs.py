"""The seed configs, unchanged: the base and the QLoRA/FSDP overlay are valid, the TP/CP overlay is refused\nat context parallelism."""

import pytest
from kubetune.config import ConfigError, DatasetConfig, TrainConfig, load_config, validate_mapping

from .conftest import BASE, OVERLAYS


def test_llama3_lora_is_valid():
    cfg = load_config(BASE)
    assert isinstance(cfg, TrainConfig)
    assert cfg.base_model == "meta-llama/Meta-Llama-3-8B"
    assert cfg.adapter == "lora" and cfg.lora_r == 16 and cfg.lora_alpha == 32
    assert cfg.lora_target_modules == ["q_proj", "v_proj", "k_proj", "o_proj"]
    assert isinstance(cfg.datasets[0], DatasetConfig) and cfg.datasets[0].type == "alpaca"
    assert cfg.sequence_len == 2048 and cfg.sample_packing and cfg.pad_to_sequence_len
    assert cfg.num_epochs == 3 and cfg.micro_batch_size == 2 and cfg.gradient_accumulation_steps == 8
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert cfg.source_dir == BASE.resolve().parent


def test_mistral_qlora_fsdp_overlay_is_valid():
    cfg = load_config(BASE, overlays=[OVERLAYS["mistral-qlora-fsdp"]])
    assert cfg.base_model == "mistralai/Mistral-Large-Instruct-2407"
    assert cfg.adapter == "qlora" and cfg.load_in_4bit
    assert cfg.bnb_4bit_compute_dtype == "bfloat16" and cfg.bnb_4bit_use_double_quant is True
    assert cfg.fsdp == ["full_shard", "auto_wrap"]
    assert cfg.fsdp_config.fsdp_state_dict_type == "FULL_STATE_DICT"
    assert cfg.fsdp_config.fsdp_offload_params is False
    assert cfg.fsdp_config.fsdp_transformer_layer_cls_to_wrap == "MistralDecoderLayer"
    assert cfg.lora_target_linear and cfg.lora_dropout == 0.05
    assert cfg.optimizer == "adamw_bnb_8bit" and cfg.lr_scheduler == "cosine"
    assert cfg.eval_steps == 100 and cfg.saves_per_epoch == 4 and cfg.warmup_steps == 100
    # Keys of the base the overlay does not replace survive.
    assert cfg.datasets[0].path == "tatsu-lab/alpaca" and cfg.output_dir == "./outputs/llama3-lora"


def test_nd_parallel_overlay_is_valid():
    """tp 4 × cp 2 with ring attention inside FSDP2 (fsdp_version defaults to 2 on a mesh): test_nd_cpu.py
    runs each of its parts on CPU processes; the world size is checked where it is known (config/mesh.py)."""
    cfg = load_config(BASE, overlays=[OVERLAYS["nd-parallel"]])
    assert cfg.tensor_parallel_size == 4 and cfg.context_parallel_size == 2 and cfg.ring_attn
    assert cfg.fsdp == ["full_shard", "auto_wrap"] and cfg.sequence_len == 32768
    assert cfg.fsdp_config.fsdp_transformer_layer_cls_to_wrap == "LlamaDecoderLayer"


def test_overlays_are_merged_by_top_level_replacement(seed_mapping):
    import yaml

    overlay = yaml.safe_load(OVERLAYS["mistral-qlora-fsdp"].read_text())
    merged = {**seed_mapping, **overlay}
    assert validate_mapping(merged) == []
    assert (
        load_config(merged).to_mapping()
        == load_config(BASE, overlays=[OVERLAYS["mistral-qlora-fsdp"]]).to_mapping()
    )


def test_seed_files_are_not_modified():
    before = {path: path.read_bytes() for path in (BASE, *OVERLAYS.values())}
    for overlay in OVERLAYS.values():
        try:
            load_config(BASE, overlays=[overlay])
        except ConfigError:
            pass
    assert before == {path: path.read_bytes() for path in before}
