"""Axolotl compatibility: the Axolotl keys kubetune knows but does not implement.

Real Axolotl configs are full of bare `key:` lines, so such a key is accepted when its value is
empty (null, "", [], {}) or, for a switch, off (false). Set to anything else it is an error that names
the key: kubetune never silently ignores a setting. The key names follow Axolotl's config schema
(`src/axolotl/utils/schemas/`), plus older spellings still common in published configs.
"""

from __future__ import annotations

from dataclasses import dataclass

_SP = (
    "kubetune does not read Axolotl's sequence-parallel / ring-flash-attn keys; its context parallelism is "
    "context_parallel_size (a ring over torch attention, with fsdp): set that and remove this key"
)
_EP = (
    "kubetune does not implement expert parallelism; train with FSDP (fsdp: [full_shard, auto_wrap]) "
    "across all GPUs instead"
)
_LAUNCHER = "the launcher sets this (torchrun, or the operator on Kubernetes); remove it"
_ARCH = "kubetune reads the architecture from the model's config; remove it"
_DERIVED = "kubetune computes this itself; remove it"


@dataclass(frozen=True)
class Unimplemented:
    """A known Axolotl key kubetune does not implement."""

    hint: str = ""  # what to do instead, when there is something
    inert: tuple[object, ...] = (False,)  # values (besides empty ones) that mean "off" and are accepted

    def accepts(self, value: object) -> bool:
        if value is None or (isinstance(value, (str, list, dict, tuple)) and len(value) == 0):
            return True
        return any(value is v or (type(value) is type(v) and value == v) for v in self.inert)


def _table(names: str, hint: str = "", **kwargs) -> dict[str, Unimplemented]:
    return {name: Unimplemented(hint, **kwargs) for name in names.split()}


_MOE = (
    "kubetune runs the model's own (transformers) MoE experts: it has no expert kernels (ScatterMoE, "
    "SonicMoE, grouped_mm) and no NVFP4 expert merge; remove it (the experts compute the same; quantize_moe_experts "
    "is what quantizes their weights)"
)
_REWARD = "reward and process-reward models (a classification head) are not supported yet; remove it"
_TRACKERS = "kubetune reports to TensorBoard, MLflow or W&B (use_tensorboard, use_mlflow, wandb_*); remove it"
_RAY = "kubetune schedules its workers itself (torchrun, or the operator on Kubernetes): remove it"
_TILED = (
    "tiled MLP (the MLP over sequence chunks) is not implemented; gradient_checkpointing and "
    "activation_offloading lower activation memory instead: remove it"
)
_CAUSAL_EVAL = (
    "generation-based evaluation is not implemented; every evaluation reports eval loss and perplexity "
    "(eval_steps / evals_per_epoch): remove it"
)
_GPTQ = (
    "GPTQ-quantized base models are not supported; train on the unquantized model with load_in_4bit instead"
)
_RELORA = "ReLoRA (periodic merge and restart of the adapter) is not implemented; remove it"

# Top-level keys.
TOP_LEVEL: dict[str, Unimplemented] = {
    # Everything below is accepted when empty/off and refused when set.
    **_table(
        """accelerator_config adam_beta3 adam_epsilon2 added_tokens_overrides
        auto_find_batch_size batch_flattening bench_dataset bench_split
        chat_template_kwargs chunked_cross_entropy chunked_cross_entropy_num_chunks
        comet_api_key comet_experiment_config comet_experiment_key comet_mode comet_online
        comet_project_name comet_workspace curriculum_sampling
        dataloader_drop_last dataset_keep_in_memory dataset_processes dataset_shard_idx
        dataset_shard_num ddp_broadcast_buffers ddp_bucket_cap_mb deepcompile
        default_system_message dion_lr dion_momentum dion_rank_fraction dion_rank_multiple_of do_bench_eval
        dpo_generate_during_eval
        dpo_norm_loss dpo_padding_free dpo_use_liger_kernel dpo_use_logits_to_keep
        dynamic_checkpoint eaft_alpha eaft_k ebft embedding_lr embedding_lr_scale
        embeddings_skip_upcast eval_sequence_len
        excess_length_strategy fix_untrained_tokens
        flash_attn_cross_entropy flash_attn_d512 flash_optimum
        flex_attention fp32_norm_classes fp32_norms fp8
        fp8_enable_fsdp_float8_all_gather freeze_mm_modules gc_collect_steps gc_steps
        gemma4_hybrid_attn_impl generate_samples generation_do_sample generation_max_new_tokens
        generation_prompt_ratio generation_temperature generation_top_k generation_top_p
        gpu_memory_limit gradio_max_new_tokens gradio_server_name gradio_server_port gradio_share
        gradio_temperature gradio_title greater_is_better hub_revision hub_strategy
        image_resize_algorithm image_size include_tkps include_tokens_per_second is_preprocess
        landmark_attention large_head_attention layer_offloading
        load_best_model_at_end lora_alpha_pattern
        lora_embedding_kernel lora_on_cpu lora_rank_pattern
        loraplus_lr_embedding loraplus_lr_ratio lr_div_factor lr_groups
        max_memory max_prompt_len mean_resizing_embeddings merge_method
        metric_for_best_model model_kwargs multipack_real_batches neftune_noise_alpha
        noisy_embedding_alpha num_dataset_shards_to_save num_generation_samples optim_args
        optim_target_modules pad_to_multiple_of
        peft_autocast_adapter_dtype peft_ensure_weight_tying peft_init_lora_weights peft_layer_replication
        peft_layers_pattern peft_layers_to_transform peft_trainable_token_indices
        pose_max_context_len pose_num_chunks pose_split_on_token_ids
        preprocess_iterable
        pretraining_sample_concatenation processor_kwargs processor_type profiler_steps
        profiler_steps_start push_dataset_to_hub qgalore_cos_threshold qgalore_gamma_proj
        qgalore_proj_bits qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type qgalore_queue_size
        qgalore_rank qgalore_scale qgalore_update_proj_gap qlora_sharded_model_loading quantization
        remove_unused_columns
        role_boundaries rope_scaling s2_attention sage_attention sample_packing_bin_size
        sample_packing_group_size sample_packing_mp_start_method sample_packing_sequentially save_first_step
        scaling_softmax scaling_softmax_bias scaling_softmax_factor sdpa_varlen
        selective_checkpointing shrink_embeddings shuffle_before_merging_datasets
        strict
        torch_compile_backend
        torch_compile_options torch_empty_cache_steps torchdistx_path trackio_project_name
        trackio_run_name trackio_space_id trainer_cls unsloth_cross_entropy_loss
        unsloth_lora_mlp unsloth_lora_o unsloth_lora_qkv unsloth_rms_norm unsloth_rope use_eaft
        use_onebitllms use_pose vllm
        xpos_rope
        llmcompressor diffusion"""
    ),
    # With something to say.
    **_table(
        "use_scattermoe use_sonicmoe experts_implementation nvfp4_merge_aware use_glm_dsa_kernels use_dsv4_kernels dsv4_fp4_grouped_mode",
        _MOE,
    ),
    **_table(
        "reward_model process_reward_model num_labels cls_model_config center_rewards_coefficient", _REWARD
    ),
    **_table(
        "use_otel_metrics otel_metrics_host otel_metrics_port use_swanlab swanlab_project swanlab_experiment_name swanlab_description swanlab_mode swanlab_workspace swanlab_log_model swanlab_log_completions swanlab_completion_log_interval swanlab_completion_max_buffer use_comet use_trackio",
        _TRACKERS,
    ),
    **_table("use_ray ray_num_workers ray_run_name resources_per_worker", _RAY),
    **_table("tiled_mlp tiled_mlp_num_shards tiled_mlp_use_original_mlp", _TILED),
    **_table("do_causal_lm_eval eval_causal_lm_metrics eval_max_new_tokens eval_table_size", _CAUSAL_EVAL),
    **_table("gptq gptq_disable_exllama gptq_groupsize gptq_model_v1", _GPTQ),
    **_table(
        "relora relora_steps relora_warmup_steps relora_anneal_steps relora_prune_ratio relora_prune_method relora_cpu_offload jagged_restart_steps jagged_restart_warmup_steps jagged_restart_anneal_steps",
        _RELORA,
    ),
    **_table(
        "sequence_parallel_degree context_parallel_degree heads_k_stride ring_attn_func",
        _SP,
    ),
    **_table("expert_parallel_size expert_parallel_num_nvl_bytes expert_parallel_token_capacity", _EP),
    **_table("local_rank world_size ddp device device_map", _LAUNCHER),
    "torch_dtype": Unimplemented("use bf16 / fp16"),
    "full_finetune": Unimplemented("leave adapter unset for a full fine-tune"),
    **_table(
        "is_falcon_derived_model is_llama_derived_model is_mistral_derived_model is_qwen_derived_model model_config_type",
        _ARCH,
    ),
    **_table("total_num_tokens total_supervised_tokens sample_packing_eff_est axolotl_config_path", _DERIVED),
    "fsdp_final_state_dict_type": Unimplemented("the final model is always saved in full; remove it"),
    "max_packed_sequence_len": Unimplemented("use sample_packing: true with sequence_len"),
    "float32": Unimplemented("use bf16: false and fp16: false"),
    "eager_attention": Unimplemented("use attn_implementation: eager"),
    # Hub downloads always use the token of HF_TOKEN (or the cached login): true is kubetune's behaviour.
    "hf_use_auth_token": Unimplemented("put the token in the HF_TOKEN environment variable", inert=(True,)),
    "merge_lora": Unimplemented("run `kubetune merge CONFIG` after training"),
    "rpo_alpha": Unimplemented(
        "trl 1.x dropped it (Axolotl refuses it too): RPO is dpo_loss_type: [sigmoid, sft] with "
        "dpo_loss_weights: [1.0, ALPHA]"
    ),
    "debug": Unimplemented("remove it"),
    # Keys whose Axolotl default is kubetune's behaviour: that value is accepted too.
    "shuffle_merged_datasets": Unimplemented(
        "kubetune always shuffles the merged datasets by seed", inert=(True,)
    ),
    "low_cpu_mem_usage": Unimplemented(
        "transformers 5 always loads the weights without a second copy in CPU memory (and ignores this key)",
        inert=(True, False),
    ),
    # Packed examples never attend to each other in kubetune (data/collator, train/attention): Axolotl's
    # default true is its behaviour; false (attention across the documents of a packed row) is not implemented.
    "pretrain_multipack_attn": Unimplemented(
        "kubetune keeps the examples of a packed row apart (their attention never crosses); remove it",
        inert=(True,),
    ),
    "tokenizer_use_fast": Unimplemented("kubetune always loads the fast tokenizer", inert=(True,)),
    "tokenizer_save_jinja_files": Unimplemented("", inert=(True,)),
    "experimental_skip_move_to_device": Unimplemented("", inert=(True,)),
}

# Other spellings of a top-level key, read as that key (setting both is an error).
RENAMED: dict[str, str] = {
    "adam_eps": "adam_epsilon",
    "model_config": "model_config_overrides",  # pydantic reserves the name model_config
    "evaluation_strategy": "eval_strategy",  # transformers' older spelling
    "model_revision": "revision_of_model",  # an older Axolotl spelling
    "pretrain_multipack_buffer_size": "streaming_multipack_buffer_size",  # Axolotl's name before v0.13
}

# Keys of a `datasets[]` / `test_datasets[]` entry.
DATASET: dict[str, Unimplemented] = {
    **_table(
        """input_transform shards shards_idx preprocess_shards input_format field_tools
        message_field_training_detail split_thinking
        logprobs_field temperature skip text_column no_input_format system_format format
        field_system system_prompt""",
        "a custom format (type: module.ClassName) can do this",
    ),
    **_table(
        "field_prompt field_completion field_label step_separator "
        "train_on_last_step_only max_completion_length",
        "kubetune's preference types read fixed columns (chat_template.default and .argilla map theirs with "
        "field_messages / field_chosen / field_rejected; KTO types read `label`); reward-model datasets are "
        "not supported yet",
    ),
    "conversation": Unimplemented("use type: chat_template with chat_template (chatml, llama3, ...)"),
    "field_human": Unimplemented("use roles: {user: [human]}"),
    "field_model": Unimplemented("use roles: {assistant: [gpt]}"),
    "train_on_eot": Unimplemented("use train_on_eos"),
    "trust_remote_code": Unimplemented("datasets loading scripts are not run; remove it"),
}

# Keys of `fsdp_config` (either spelling, with or without the `fsdp_` prefix).
FSDP_CONFIG: dict[str, Unimplemented] = {
    "fsdp_final_state_dict_type": Unimplemented("the final model is always saved in full; remove it"),
    "fsdp_mixed_precision_policy": Unimplemented("use bf16 / fp16"),
    "fsdp_cpu_offload_pin_memory": Unimplemented(""),
    "fsdp_forward_prefetch": Unimplemented(""),
    "fsdp_offload_optimizer": Unimplemented("use fsdp_offload_params"),
    "fsdp_limit_all_gathers": Unimplemented("", inert=(True,)),
}

_GRPO = (
    "it drives GRPO's online generation (vLLM, reward functions, sampling), and rl: grpo is not implemented yet "
    "(design: docs/preference-grpo.md): remove it, or train offline with rl: dpo / ipo / orpo / kto / simpo"
)

# Keys of the `trl` block (Axolotl's TRLConfig). Those kubetune honours are in config/preference.py
# (TrlConfig); the rest drive GRPO's generation, which kubetune does not run. Their Axolotl defaults
# are accepted, as a config dumped by Axolotl holds them.
TRL: dict[str, Unimplemented] = {
    **_table(
        """vllm_mode vllm_server_timeout vllm_guided_decoding_regex reward_funcs reward_weights
        generation_batch_size num_generations num_completions_to_print importance_sampling_level
        temperature top_p top_k min_p repetition_penalty generation_kwargs chat_template_kwargs
        num_iterations epsilon epsilon_high use_liger_loss vllm_enable_sleep_mode rollout_func
        multi_objective_aggregation prefetch_depth vllm_sync_interval streaming_partial_batch
        streaming_min_groups vllm_importance_sampling_correction vllm_importance_sampling_mode
        vllm_importance_sampling_cap off_policy_mask_threshold use_bias_correction_kl
        use_vllm log_completions mask_truncated_completions use_data_producer async_prefetch vllm_lora_sync""",
        _GRPO,
    ),
    "vllm_server_host": Unimplemented(_GRPO, inert=("0.0.0.0",)),  # nosec B104: a default, never bound
    "vllm_server_port": Unimplemented(_GRPO, inert=(8000,)),
    "scale_rewards": Unimplemented(_GRPO, inert=(True,)),
    "reward_num_workers": Unimplemented(_GRPO, inert=(1,)),
    "replay_buffer_size": Unimplemented(_GRPO, inert=(0,)),
    "replay_recompute_logps": Unimplemented(_GRPO, inert=(True,)),
    "reroll_start_fraction": Unimplemented(_GRPO, inert=(1.0, 1)),
    "reroll_max_groups": Unimplemented(_GRPO, inert=(1,)),
    "skip_zero_advantage_batches": Unimplemented(_GRPO, inert=(True,)),
    "loss_type": Unimplemented(
        "trl.loss_type is GRPO's loss (grpo, bnpo, dr_grpo), and rl: grpo is not implemented yet; the "
        "offline losses are chosen by rl (dpo, ipo, orpo, kto, simpo) and dpo_loss_type"
    ),
    "max_completion_length": Unimplemented(
        "trl.max_completion_length bounds GRPO's generated completions, and rl: grpo is not implemented "
        "yet; the offline losses score the dataset's completions whole (a row longer than sequence_len is "
        "dropped): remove it"
    ),
}
