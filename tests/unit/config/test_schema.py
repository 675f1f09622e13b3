"""The schema's shape: documented fields, a structural-friendly JSON schema, no torch on import."""

import json
import subprocess
import sys
import typing

from kubetune.config import DatasetConfig, TrainConfig, training_config_json_schema
from kubetune.config.adapter import LoftQ, Mxfp4Kwargs, PeftOptions
from kubetune.config.docs import render_markdown
from kubetune.config.hardware import FlexCompileKwargs
from kubetune.config.model import SpecialTokens
from kubetune.config.parallel import FsdpConfig
from kubetune.config.preference import TrlConfig
from kubetune.config.qat import QATBlock
from kubetune.config.training import GradientCheckpointingKwargs, Optimizer
from pydantic import BaseModel

MODELS = (
    TrainConfig,
    DatasetConfig,
    FsdpConfig,
    SpecialTokens,
    GradientCheckpointingKwargs,
    PeftOptions,
    LoftQ,
    Mxfp4Kwargs,
    FlexCompileKwargs,
    QATBlock,
    TrlConfig,
)

# The keys issue #2 names (wandb_* / mlflow_* checked by prefix below).
ISSUE_KEYS = """base_model base_model_config model_type tokenizer_type tokenizer_config trust_remote_code special_tokens
tokens chat_template datasets test_datasets dataset_prepared_path val_set_size seed sequence_len sample_packing
eval_sample_packing pad_to_sequence_len train_on_inputs adapter lora_r lora_alpha lora_dropout lora_target_modules
lora_target_linear lora_modules_to_save lora_fan_in_fan_out lora_model_dir peft_use_dora peft_use_rslora load_in_8bit
load_in_4bit bnb_4bit_compute_dtype bnb_4bit_quant_type bnb_4bit_use_double_quant flash_attention sdp_attention
xformers_attention attn_implementation bf16 fp16 tf32 gradient_checkpointing gradient_checkpointing_kwargs optimizer
lr_scheduler learning_rate weight_decay warmup_steps warmup_ratio cosine_min_lr_ratio max_grad_norm adam_beta1
adam_beta2 adam_epsilon num_epochs max_steps micro_batch_size gradient_accumulation_steps eval_batch_size eval_steps
evals_per_epoch save_steps saves_per_epoch save_total_limit logging_steps resume_from_checkpoint
auto_resume_from_checkpoints early_stopping_patience output_dir save_safetensors hub_model_id fsdp fsdp_config
deepspeed tensor_parallel_size context_parallel_size ring_attn""".split()
DATASET_KEYS = """path type name split data_files ds_type field field_messages message_field_role message_field_content
roles roles_to_train train_on_eos chat_template field_instruction field_input field_output""".split()


def test_every_key_of_the_issue_exists():
    assert set(ISSUE_KEYS) <= set(TrainConfig.model_fields)
    assert set(DATASET_KEYS) <= set(DatasetConfig.model_fields)
    assert any(k.startswith("wandb_") for k in TrainConfig.model_fields)
    assert any(k.startswith("mlflow_") for k in TrainConfig.model_fields)
    fsdp_keys = """fsdp_version fsdp_offload_params fsdp_state_dict_type fsdp_transformer_layer_cls_to_wrap
    fsdp_auto_wrap_policy fsdp_cpu_ram_efficient_loading fsdp_sync_module_states fsdp_use_orig_params
    fsdp_activation_checkpointing fsdp_reshard_after_forward""".split()
    assert set(fsdp_keys) <= set(FsdpConfig.model_fields)


def test_every_field_has_a_description_and_appears_in_the_docs():
    docs = render_markdown()
    for model in MODELS:
        assert model.model_config.get("extra") == "forbid" and model.model_config.get("frozen")
        for name, info in model.model_fields.items():
            assert info.description and len(info.description) > 10, f"{model.__name__}.{name}"
            assert f"| `{name}` |" in docs, name


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}/{index}")


def test_json_schema_is_structural_friendly():
    schema = training_config_json_schema()
    json.dumps(schema)  # serialisable
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) == {
        "base_model",
        "learning_rate",
    }  # datasets or pretraining_dataset: a rule
    for path, node in _walk(schema):
        if isinstance(node, dict):
            assert "$ref" not in node and "$defs" not in node, path
            assert "const" not in node, path
            assert {"type": "null"} not in node.get("anyOf", []), path
    props = schema["properties"]
    for name, prop in props.items():
        assert prop.get("description"), name
    assert props["optimizer"]["enum"] == list(typing.get_args(Optimizer))
    assert {"adamw_torch_fused", "adamw_torch_8bit", "adamw_torch_4bit", "adamw_8bit", "muon"} <= set(
        props["optimizer"]["enum"]
    )
    from transformers import SchedulerType

    assert props["lr_scheduler"]["enum"] == [s.value for s in SchedulerType]  # every name get_scheduler knows
    assert props["adapter"]["enum"] == ["lora", "qlora"]
    assert props["val_set_size"]["type"] == "number"
    dataset = props["datasets"]["items"]
    assert dataset["type"] == "object" and set(dataset["required"]) == {
        "path"
    }  # an empty type reads tokenized rows
    assert dataset["properties"]["train_on_eos"]["enum"] == ["all", "turn", "last", "none"]
    assert props["fsdp_config"]["properties"]["fsdp_version"]["enum"] == [1, 2]
    assert props["fsdp"]["items"]["enum"] == [
        "full_shard",
        "shard_grad_op",
        "hybrid_shard",
        "no_shard",
        "offload",
        "auto_wrap",
    ]


def test_nested_models_are_schema_sections():
    for model in MODELS:
        for info in model.model_fields.values():
            for arg in typing.get_args(info.annotation) or (info.annotation,):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    assert arg in MODELS


def test_importing_kubetune_config_never_imports_torch():
    code = (
        "import sys, kubetune.config, kubetune.config.docs, kubetune.config.commands.validate, "
        "kubetune.config.commands.schema\n"
        "from kubetune.config import load_config, validate_mapping, training_config_json_schema\n"
        "training_config_json_schema(); validate_mapping({})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'datasets', 'peft', 'accelerate', 'numpy'))\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", result.stdout
