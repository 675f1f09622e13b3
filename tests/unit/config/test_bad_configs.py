"""A battery of bad configs: each is refused with a problem at the exact key path, with a fix."""

import copy

import pytest
from kubetune.config import ConfigProblem, validate_mapping

DROP = object()


def _apply(base: dict, changes: dict) -> dict:
    config = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            config.pop(key, None)
        else:
            config[key] = value
    return config


QLORA = {"adapter": "qlora", "load_in_4bit": True}
FSDP = {"fsdp": ["full_shard", "auto_wrap"]}

# (id, changes to the seed llama3-lora config, the key path a problem must name)
BAD = [
    ("unknown-top-level-key", {"learning_rat": 1e-4}, "learning_rat"),
    (
        "unknown-dataset-key",
        {"datasets": [{"path": "d", "type": "alpaca", "feild": "x"}]},
        "datasets[0].feild",
    ),
    (
        "unknown-fsdp-config-key",
        {**FSDP, "fsdp_config": {"fsdp_ofload_params": True}},
        "fsdp_config.fsdp_ofload_params",
    ),
    ("unknown-special-token", {"special_tokens": {"pad": "<pad>"}}, "special_tokens.pad"),
    ("axolotl-key-set", {"auto_find_batch_size": True}, "auto_find_batch_size"),
    (
        "axolotl-dataset-key-set",
        {"datasets": [{"path": "d", "type": "alpaca", "shards": 4}]},
        "datasets[0].shards",
    ),
    ("missing-base-model", {"base_model": DROP}, "base_model"),
    ("missing-datasets", {"datasets": DROP}, "datasets"),
    ("empty-datasets", {"datasets": []}, "datasets"),
    ("missing-learning-rate", {"learning_rate": DROP}, "learning_rate"),
    ("dataset-missing-path", {"datasets": [{"type": "alpaca"}]}, "datasets[0].path"),
    (
        "dataset-without-type-takes-no-alpaca-fields",
        {"datasets": [{"path": "d", "field_instruction": "q"}]},
        "datasets[0].field_instruction",
    ),
    ("dataset-type-unknown", {"datasets": [{"path": "d", "type": "alpacca"}]}, "datasets[0].type"),
    (
        "dataset-type-axolotl-only",
        {"datasets": [{"path": "a", "type": "alpaca"}, {"path": "d", "type": "sharegpt"}]},
        "datasets[1].type",
    ),
    (
        "dataset-type-bad-custom-shape",
        {"datasets": [{"path": "d", "type": "my-module.Fmt"}]},
        "datasets[0].type",
    ),
    ("dataset-not-a-mapping", {"datasets": ["tatsu-lab/alpaca"]}, "datasets[0]"),
    (
        "dataset-ds-type",
        {"datasets": [{"path": "d", "type": "alpaca", "ds_type": "xml"}]},
        "datasets[0].ds_type",
    ),
    (
        "dataset-train-on-eos",
        {"datasets": [{"path": "d", "type": "chat_template", "train_on_eos": "sometimes"}]},
        "datasets[0].train_on_eos",
    ),
    (
        "dataset-key-of-other-type",
        {"datasets": [{"path": "d", "type": "alpaca", "field_messages": "conversations"}]},
        "datasets[0].field_messages",
    ),
    (
        "dataset-roles-to-train-unknown",
        {"datasets": [{"path": "d", "type": "chat_template", "roles_to_train": ["assistant", "bot"]}]},
        "datasets[0].roles_to_train[1]",
    ),
    ("test-dataset-type", {"test_datasets": [{"path": "d", "type": "nope"}]}, "test_datasets[0].type"),
    ("learning-rate-zero", {"learning_rate": 0}, "learning_rate"),
    ("learning-rate-text", {"learning_rate": "fast"}, "learning_rate"),
    ("micro-batch-zero", {"micro_batch_size": 0}, "micro_batch_size"),
    ("grad-accum-negative", {"gradient_accumulation_steps": -1}, "gradient_accumulation_steps"),
    ("sequence-len-text", {"sequence_len": "long"}, "sequence_len"),
    ("optimizer-unknown", {"optimizer": "adamw"}, "optimizer"),
    ("scheduler-unknown", {"lr_scheduler": "one_cycle"}, "lr_scheduler"),
    ("constant-has-no-warmup", {"lr_scheduler": "constant", "warmup_ratio": 0.1}, "warmup_ratio"),
    ("wsd-without-decay-steps", {"lr_scheduler": "warmup_stable_decay"}, "lr_scheduler_kwargs"),
    (
        "scheduler-kwarg-of-another-schedule",
        {"lr_scheduler": "cosine", "lr_scheduler_kwargs": {"power": 2}},
        "lr_scheduler_kwargs.power",
    ),
    ("plateau-without-eval-data", {"lr_scheduler": "reduce_lr_on_plateau"}, "lr_scheduler"),
    ("eta-min-with-linear", {"lr_scheduler": "linear", "eta_min": 1e-6}, "eta_min"),
    ("eta-min-and-min-ratio", {"eta_min": 1e-6, "cosine_min_lr_ratio": 0.1}, "eta_min"),
    ("constant-tail-without-floor", {"cosine_constant_lr_ratio": 0.8}, "cosine_constant_lr_ratio"),
    (
        "quadratic-warmup-with-floor",
        {"lr_quadratic_warmup": True, "cosine_min_lr_ratio": 0.1},
        "lr_quadratic_warmup",
    ),
    ("warmup-steps-fractional-above-one", {"warmup_steps": 1.5}, "warmup_steps"),
    ("save-strategy-best", {"save_strategy": "best"}, "save_strategy"),
    ("save-strategy-no-with-save-steps", {"save_strategy": "no", "save_steps": 10}, "save_steps"),
    ("eval-strategy-without-eval-data", {"eval_strategy": "epoch"}, "eval_strategy"),
    ("watchdog-patience-without-threshold", {"loss_watchdog_patience": 3}, "loss_watchdog_patience"),
    ("muon-with-fsdp", {**FSDP, "optimizer": "muon"}, "optimizer"),
    ("find-unused-with-fsdp", {**FSDP, "ddp_find_unused_parameters": True}, "ddp_find_unused_parameters"),
    ("adam-eps-twice", {"adam_eps": 1e-9, "adam_epsilon": 1e-8}, "adam_eps"),
    ("unknown-plugin", {"plugins": ["axolotl.integrations.kernels.KernelsPlugin"]}, "plugins"),
    (
        "fused-loss-on-and-off",
        {
            "plugins": ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
            "cut_cross_entropy": False,
        },
        "cut_cross_entropy",
    ),
    ("lora-dropout-range", {"lora_dropout": 1.5}, "lora_dropout"),
    ("lora-target-modules-not-strings", {"lora_target_modules": ["q_proj", 7]}, "lora_target_modules[1]"),
    ("qlora-without-4bit", {"adapter": "qlora"}, "load_in_4bit"),
    ("lora-with-4bit", {"load_in_4bit": True}, "adapter"),
    ("4bit-and-8bit", {**QLORA, "load_in_8bit": True}, "load_in_8bit"),
    ("lora-keys-without-adapter", {"adapter": DROP}, "lora_r"),
    ("adapter-without-targets", {"lora_target_modules": DROP}, "lora_target_modules"),
    ("bnb-key-without-4bit", {"bnb_4bit_quant_type": "nf4"}, "bnb_4bit_quant_type"),
    ("bnb-quant-type", {**QLORA, "bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type"),
    ("bnb-compute-dtype", {**QLORA, "bnb_4bit_compute_dtype": "fp16"}, "bnb_4bit_compute_dtype"),
    ("save-steps-and-saves-per-epoch", {"save_steps": 100, "saves_per_epoch": 2}, "saves_per_epoch"),
    ("eval-steps-and-evals-per-epoch", {"eval_steps": 100, "evals_per_epoch": 2}, "evals_per_epoch"),
    ("eval-steps-negative", {"eval_steps": -5}, "eval_steps"),
    ("warmup-steps-and-ratio", {"warmup_steps": 10, "warmup_ratio": 0.1}, "warmup_ratio"),
    ("no-training-length", {"num_epochs": DROP}, "num_epochs"),
    ("bf16-and-fp16", {"bf16": True, "fp16": True}, "fp16"),
    ("flash-and-sdp", {"flash_attention": True, "sdp_attention": True}, "sdp_attention"),
    ("flash-and-xformers", {"flash_attention": True, "xformers_attention": True}, "xformers_attention"),
    (
        "attn-implementation-contradiction",
        {"flash_attention": True, "attn_implementation": "sdpa"},
        "attn_implementation",
    ),
    (
        "hub-kernel-outside-kernels-community",
        {"attn_implementation": "someone/flash-attn3"},
        "attn_implementation",
    ),
    (
        "mxfp4-without-dequantize",
        {"model_quantization_config": "Mxfp4Config"},
        "model_quantization_config_kwargs",
    ),
    (
        "mxfp4-dequantize-false",
        {
            "model_quantization_config": "Mxfp4Config",
            "model_quantization_config_kwargs": {"dequantize": False},
        },
        "model_quantization_config_kwargs",
    ),
    (
        "mxfp4-kwargs-without-config",
        {"model_quantization_config_kwargs": {"dequantize": True}},
        "model_quantization_config_kwargs",
    ),
    (
        "mxfp4-and-bitsandbytes",
        {
            **QLORA,
            "model_quantization_config": "Mxfp4Config",
            "model_quantization_config_kwargs": {"dequantize": True},
        },
        "model_quantization_config",
    ),
    (
        "quantization-config-not-mxfp4",
        {"model_quantization_config": "GPTQConfig"},
        "model_quantization_config",
    ),
    (
        "flex-compile-kwargs-without-flex",
        {"flex_attn_compile_kwargs": {"dynamic": False}},
        "flex_attn_compile_kwargs",
    ),
    ("streaming-without-max-steps", {"streaming": True}, "max_steps"),
    ("lisa-with-an-adapter", {"lisa_n_layers": 2, "lisa_step_interval": 5}, "lisa_n_layers"),
    ("lisa-interval-alone", {"lisa_step_interval": 5}, "lisa_step_interval"),
    ("packing-without-sequence-len", {"sequence_len": DROP}, "sequence_len"),
    ("val-set-size-one", {"val_set_size": 1.0}, "val_set_size"),
    (
        "val-set-size-with-test-datasets",
        {"val_set_size": 0.1, "test_datasets": [{"path": "t", "type": "alpaca"}]},
        "val_set_size",
    ),
    ("fsdp-and-deepspeed", {**FSDP, "deepspeed": {"zero_optimization": {"stage": 3}}}, "deepspeed"),
    ("fsdp-option-unknown", {"fsdp": ["full_shard", "auto_wrapp"]}, "fsdp[1]"),
    ("fsdp-two-strategies", {"fsdp": ["full_shard", "shard_grad_op"]}, "fsdp"),
    ("fsdp-version-without-fsdp", {"fsdp_version": 2}, "fsdp_version"),
    (
        "fsdp-version-twice-disagreeing",
        {**FSDP, "fsdp_version": 2, "fsdp_config": {"fsdp_version": 1}},
        "fsdp_version",
    ),
    (
        "fsdp-sharding-strategy-unknown",
        {"fsdp_config": {"sharding_strategy": "WHOLE"}},
        "fsdp_config.fsdp_sharding_strategy",
    ),
    (
        "fsdp-sharding-strategy-contradicts-list",
        {**FSDP, "fsdp_config": {"sharding_strategy": "NO_SHARD"}},
        "fsdp_config.fsdp_sharding_strategy",
    ),
    ("fsdp-version-3", {**FSDP, "fsdp_config": {"fsdp_version": 3}}, "fsdp_config.fsdp_version"),
    (
        "fsdp-state-dict-type",
        {**FSDP, "fsdp_config": {"fsdp_state_dict_type": "FULL"}},
        "fsdp_config.fsdp_state_dict_type",
    ),
    (
        "fsdp-offload-contradiction",
        {"fsdp": ["full_shard", "offload"], "fsdp_config": {"fsdp_offload_params": False}},
        "fsdp_config.fsdp_offload_params",
    ),
    (
        "fsdp-activation-and-reentrant-gradient-checkpointing",
        {
            **FSDP,
            "gradient_checkpointing": True,
            "gradient_checkpointing_kwargs": {"use_reentrant": True},
            "fsdp_config": {"fsdp_activation_checkpointing": True},
        },
        "gradient_checkpointing",
    ),
    ("fsdp-key-at-top-level", {"fsdp_offload_params": True}, "fsdp_offload_params"),
    ("tensor-parallel-full-fine-tune", {"tensor_parallel_size": 2, "adapter": DROP}, "tensor_parallel_size"),
    (
        "tensor-parallel-with-ram-efficient-loading",
        {**FSDP, "tensor_parallel_size": 2, "fsdp_config": {"fsdp_cpu_ram_efficient_loading": True}},
        "fsdp_config.fsdp_cpu_ram_efficient_loading",
    ),
    ("context-parallel-without-fsdp", {"context_parallel_size": 2}, "context_parallel_size"),
    (
        "context-parallel-with-flash",
        {**FSDP, "context_parallel_size": 2, "flash_attention": True},
        "flash_attention",
    ),
    (
        "context-parallel-with-sdpa",
        {**FSDP, "context_parallel_size": 2, "attn_implementation": "sdpa"},
        "attn_implementation",
    ),
    ("ring-attention-without-context-parallel", {"ring_attn": True}, "ring_attn"),
    (
        "context-parallel-preference",
        {**FSDP, "context_parallel_size": 2, "rl": "dpo"},
        "context_parallel_size",
    ),
    (
        "mesh-with-deepspeed",
        {"dp_shard_size": 2, "deepspeed": {"zero_optimization": {"stage": 2}}},
        "dp_shard_size",
    ),
    (
        "mesh-with-fsdp1",
        {**FSDP, "dp_replicate_size": 2, "fsdp_config": {"fsdp_version": 1}},
        "fsdp_config.fsdp_version",
    ),
    ("dp-shard-without-fsdp", {"dp_shard_size": 2}, "dp_shard_size"),
    (
        "tp-with-pure-replication",
        {"tensor_parallel_size": 2, "dp_replicate_size": 2, "dp_shard_size": 1},
        "dp_replicate_size",
    ),
    ("sequence-parallel-degree", {"sequence_parallel_degree": 2}, "sequence_parallel_degree"),
    ("chat-template-unshipped", {"chat_template": "nemotron_h"}, "chat_template"),
    (
        "unfrozen-parameters-row-range",
        {"unfrozen_parameters": ["^lm_head.weight$[:32000]"]},
        "unfrozen_parameters",
    ),
    ("unfrozen-parameters-bad-regex", {"unfrozen_parameters": ["model.layers.[0-"]}, "unfrozen_parameters"),
    (
        "gradient-checkpointing-offload-disk",
        {"gradient_checkpointing": "offload_disk"},
        "gradient_checkpointing",
    ),
    (
        "gradient-checkpointing-offload-without-offloading",
        {"gradient_checkpointing": "offload", "activation_offloading": False},
        "gradient_checkpointing",
    ),
    ("chat-template-jinja-missing", {"chat_template": "jinja"}, "chat_template_jinja"),
    ("save-safetensors-false", {"save_safetensors": False}, "save_safetensors"),
    ("model-type-not-a-class-name", {"model_type": "Auto Model"}, "model_type"),
    ("deepspeed-wrong-type", {"deepspeed": 3}, "deepspeed"),
    (
        "gradient-checkpointing-kwargs-typo",
        {"gradient_checkpointing_kwargs": {"use_reentrent": False}},
        "gradient_checkpointing_kwargs.use_reentrent",
    ),
    ("prefetch-without-workers", {"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor"),
    ("wandb-name-without-wandb", {"wandb_name": "n"}, "wandb_name"),
    ("wandb-watch-not-implemented", {"wandb_project": "p", "wandb_watch": "all"}, "wandb_watch"),
    ("mlflow-run-name-without-mlflow", {"mlflow_run_name": "r1"}, "mlflow_run_name"),
    (
        "mlflow-experiment-with-mlflow-off",
        {"use_mlflow": False, "mlflow_experiment_name": "e"},
        "mlflow_experiment_name",
    ),
    ("hub-push-not-implemented", {"hub_model_id": "me/model"}, "hub_model_id"),
    (
        "reinit-weights-of-a-quantized-base",
        {"reinit_weights": True, "adapter": "qlora", "load_in_4bit": True},
        "reinit_weights",
    ),
    (
        "deduplication-of-preference-pairs",
        {"dataset_exact_deduplication": True, "rl": "dpo"},
        "dataset_exact_deduplication",
    ),
    (
        "rms-norm-switches-disagree",
        {"liger_rms_norm": True, "flash_attn_rms_norm": False},
        "flash_attn_rms_norm",
    ),
    ("early-stopping-without-eval-data", {"early_stopping_patience": 3}, "early_stopping_patience"),
    (
        "cosine-floor-with-linear",
        {"lr_scheduler": "linear", "cosine_min_lr_ratio": 0.1},
        "cosine_min_lr_ratio",
    ),
    ("tokens-with-adapter-need-modules-to-save", {"tokens": ["<tool>"]}, "lora_modules_to_save"),
    ("learning-rate-nan", {"learning_rate": float("nan")}, "learning_rate"),
    ("learning-rate-boolean", {"learning_rate": True}, "learning_rate"),
    ("fsdp-version-boolean", {**FSDP, "fsdp_config": {"fsdp_version": True}}, "fsdp_config.fsdp_version"),
    ("datasets-as-a-mapping", {"datasets": {"path": "d", "type": "alpaca"}}, "datasets"),
    (
        "message-property-mappings-extra-key",
        {
            "datasets": [
                {
                    "path": "d",
                    "type": "chat_template",
                    "message_property_mappings": {"role": "from", "text": "value"},
                }
            ]
        },
        "datasets[0].message_property_mappings",
    ),
]


def test_battery_is_large_enough():
    assert len(BAD) >= 25
    assert len({case[0] for case in BAD}) == len(BAD)


@pytest.mark.parametrize(("changes", "path"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_is_refused_at_the_key_path(seed_mapping, changes, path):
    problems = validate_mapping(_apply(seed_mapping, changes))
    assert problems, "the config was accepted"
    assert all(isinstance(p, ConfigProblem) for p in problems)
    assert path in [p.path for p in problems], "\n".join(map(str, problems))
    for problem in problems:
        assert problem.message and problem.fix, problem
        assert not problem.message.startswith("internal error"), problem


def test_all_problems_are_reported_at_once(seed_mapping):
    config = _apply(
        seed_mapping,
        {"learning_rat": 1e-4, "micro_batch_size": 0, "save_steps": 10, "saves_per_epoch": 2},
    )
    config.pop("learning_rate")
    problems = validate_mapping(config)
    assert sorted(p.path for p in problems) == sorted(
        ["learning_rat", "micro_batch_size", "saves_per_epoch", "learning_rate"]
    )


def test_a_value_reported_once_is_not_reported_again(seed_mapping):
    # learning_rate: true is refused as a value; it must not also be reported as missing.
    problems = validate_mapping(_apply(seed_mapping, {"learning_rate": True, "num_epochs": False}))
    assert sorted(p.path for p in problems) == ["learning_rate", "num_epochs"]


def test_three_faults_of_three_kinds_give_three_problems(seed_mapping):
    # An unknown key (screening), a bad value (types) and a contradiction (cross-field rule).
    config = _apply(seed_mapping, {"warmup_stepz": 10, "lora_dropout": 2, "bf16": True, "fp16": True})
    problems = validate_mapping(config)
    assert sorted(p.path for p in problems) == ["fp16", "lora_dropout", "warmup_stepz"]
