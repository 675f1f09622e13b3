"""Axolotl's model-side options, applied by load_model, the loss and the training loop through one call
each: which weights train (`unfrozen_parameters`), the embedding size (`resize_token_embeddings_to_32x`),
the router load-balancing loss (`model_config: {output_router_logits: true}`), and activation offloading
(`activation_offloading`, `gradient_checkpointing: offload`), the checkpoint's quantization config
(`model_quantization_config`) and Llama 4's expert layout (`llama4_linearized_experts`)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import nn

from kubetune.config.adapter import unfrozen_parameter_regex
from kubetune.train.errors import UserError
from kubetune.train.loss import causal_lm

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from transformers import (
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )
    from transformers.models.auto.auto_factory import _BaseAutoModelClass
    from transformers.utils.quantization_config import Mxfp4Config, QuantizationConfigMixin

    from kubetune.config import TrainConfig
    from kubetune.train.model import TrainableModel

    # A class load_model may name: an Auto class (AutoModelForCausalLM) or a model class (LlamaForCausalLM).
    ModelClass = type[PreTrainedModel] | type[_BaseAutoModelClass]


class LoadOptions(TypedDict, total=False):
    """The keyword arguments of the base model's from_pretrained (model.load_base builds them)."""

    dtype: torch.dtype
    attn_implementation: str
    trust_remote_code: bool
    revision: str
    config: PretrainedConfig
    quantization_config: QuantizationConfigMixin
    tp_plan: str
    device_mesh: DeviceMesh
    device_map: dict[str, torch.device]


log = logging.getLogger("kubetune.train")


def freeze_all_but(model: TrainableModel, patterns: list[str], *, checkpointing: bool) -> list[str]:
    """Freeze every parameter whose name matches none of `patterns` (Axolotl's reading: see
    unfrozen_parameter_regex); returns the names left trainable. UserError when none is.

    With an adapter attached, names are the base model's (peft's `base_model.model.` prefix dropped,
    so `model.language_model.*` keeps the LoRA weights inside the language model) and only weights
    that were trainable stay so: the patterns narrow what the adapter trains, never unfreeze a base weight."""
    from peft import PeftModel

    adapter = isinstance(model, PeftModel)
    regexes = [unfrozen_parameter_regex(pattern) for pattern in patterns]
    trained = []
    for name, param in model.named_parameters():
        plain = name.removeprefix("base_model.model.") if adapter else name
        keep = any(regex.match(plain) for regex in regexes) and (param.requires_grad or not adapter)
        param.requires_grad_(keep)
        if keep:
            trained.append(plain)
    if not trained:
        sample = ", ".join(name for name, _ in list(model.named_parameters())[:4])
        raise UserError(
            "unfrozen_parameters matches none of the "
            + ("adapter's weights" if adapter else "model's parameters")
            + ", so nothing would train.",
            f"Match the parameter names from their start (e.g. {sample}); `.` is a literal period.",
            key="unfrozen_parameters",
        )
    embeddings = model.get_input_embeddings()
    if checkpointing and not adapter and embeddings is not None and not embeddings.weight.requires_grad:
        # Reentrant checkpointing passes gradients only to inputs that require them: with frozen
        # embeddings the layers' input must be made to (peft does the same for adapters).
        model.enable_input_require_grads()
    log.info(
        "unfrozen_parameters: training %d of %d parameter tensors",
        len(trained),
        len(list(model.parameters())),
    )
    return trained


def embedding_rows(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """Rows the embedding matrix needs: the tokenizer's size, rounded up to a multiple of 32 with
    `resize_token_embeddings_to_32x` (tensor-core-friendly shapes); load_model grows it when smaller."""
    rows = len(tokenizer)
    return math.ceil(rows / 32) * 32 if cfg.resize_token_embeddings_to_32x else rows


def new_model(
    model_cls: ModelClass,
    source: str,
    load_kwargs: LoadOptions,
    device: torch.device | None,
) -> PreTrainedModel:
    """`reinit_weights`: the model `from_pretrained` would build, with freshly initialised weights instead
    of the pretrained ones (which are never read): its config (with `model_config` applied), dtype and
    attention implementation."""
    import transformers

    config = load_kwargs.get("config")
    if config is None:
        revision = {"revision": load_kwargs["revision"]} if "revision" in load_kwargs else {}
        config = transformers.AutoConfig.from_pretrained(
            source, trust_remote_code=load_kwargs["trust_remote_code"], **revision
        )
    options = {"dtype": load_kwargs["dtype"], "attn_implementation": load_kwargs["attn_implementation"]}
    if hasattr(model_cls, "from_config"):  # an Auto class (AutoModelForCausalLM)
        model = model_cls.from_config(config, trust_remote_code=load_kwargs["trust_remote_code"], **options)
    else:  # a model class named by model_type, e.g. LlamaForCausalLM
        model = model_cls._from_config(config, **options)
    log.info("reinit_weights: %s built from its config with new random weights", type(model).__name__)
    return model.to(device) if device is not None else model


def model_class(model_cls: ModelClass, source: str, load_kwargs: LoadOptions) -> type:
    """The concrete transformers class `model_cls.from_pretrained(source)` builds (an Auto class resolved
    through the model's config; a named class as it is). A remote-code model resolves to the Auto class."""
    import transformers

    mapping = getattr(model_cls, "_model_mapping", None)  # an Auto class's config -> model class
    if mapping is None:
        return model_cls
    config = load_kwargs.get("config")
    if config is None:
        revision = {"revision": load_kwargs["revision"]} if "revision" in load_kwargs else {}
        try:
            config = transformers.AutoConfig.from_pretrained(
                source, trust_remote_code=load_kwargs["trust_remote_code"], **revision
            )
        except (OSError, ValueError):
            return model_cls  # from_pretrained reports it, with the key to fix
    try:
        return mapping[type(config)]
    except (KeyError, ValueError):
        return model_cls


def model_config(
    source: str, overrides: dict | None, trust_remote_code: bool, revision: dict[str, str] | None = None
) -> PretrainedConfig:
    """The model's transformers config with Axolotl's `model_config` attributes set; UserError naming
    the ones the config class does not have (transformers would drop them silently)."""
    import transformers

    config, unused = transformers.AutoConfig.from_pretrained(
        source,
        trust_remote_code=trust_remote_code,
        return_unused_kwargs=True,
        **(revision or {}),
        **(overrides or {}),
    )
    if unused:
        raise UserError(
            f"model_config sets {', '.join(sorted(unused))}, which {type(config).__name__} does not have.",
            f"Use attributes of {type(config).__name__} (see the model's config.json), or remove them.",
            key="model_config",
        )
    return config


def router_aux_loss(model: nn.Module) -> Callable[[tuple], torch.Tensor] | None:
    """With `output_router_logits` on the config of a mixture-of-experts model: the function of the
    decoder's router logits giving router_aux_loss_coef x the model family's own load-balancing loss
    (what its ForCausalLM adds to the loss); None when the flag is off. UserError when the flag is
    on but the model has no such loss."""
    lm = causal_lm(model)
    if not getattr(lm.config, "output_router_logits", False):
        return None
    balance = getattr(sys.modules.get(type(lm).__module__), "load_balancing_loss_func", None)
    experts, top_k = getattr(lm, "num_experts", None), getattr(lm, "num_experts_per_tok", None)
    coef = getattr(lm, "router_aux_loss_coef", None)
    if balance is None or experts is None or top_k is None or coef is None:
        raise UserError(
            f"output_router_logits is set, but {type(lm).__name__} has no router load-balancing loss.",
            "Remove output_router_logits from model_config (it applies to mixture-of-experts models such "
            "as Mixtral).",
            key="model_config.output_router_logits",
        )
    return lambda router_logits: coef * balance(router_logits, experts, top_k, None)


def activation_offloading(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """Around each forward and backward: the tensors autograd saves for the backward pass go to CPU
    memory (pinned on a GPU machine) and come back when the backward pass needs them. With gradient
    checkpointing those are the checkpointed layers' inputs. Off: a no-op context."""
    if not cfg.activation_offloading:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())


def checkpoint_quantization(cfg: TrainConfig) -> Mxfp4Config | None:
    """`model_quantization_config: Mxfp4Config` with `dequantize: true` (config rules refuse any other
    form): transformers' Mxfp4Config that unpacks a gpt-oss checkpoint's MXFP4 experts into plain
    weights while loading. Without it a GPU with the MXFP4 kernels keeps them packed, and transformers'
    MXFP4 layers do not train. None when the key is unset."""
    if cfg.model_quantization_config != "Mxfp4Config":
        return None
    from transformers.utils.quantization_config import Mxfp4Config

    log.info("model_quantization_config: Mxfp4Config(dequantize=True): MXFP4 experts load as plain weights")
    return Mxfp4Config(dequantize=True)


def match_unpacked_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """transformers unpacks MXFP4 experts to bf16 whatever `dtype` the load asked for: in a run of
    another dtype (float32 on CPU, fp16) those weights take the run's dtype. Only bf16 weights change,
    so the modules the model keeps in float32 (`_keep_in_fp32_modules`, e.g. gpt-oss' norms) stay."""
    if dtype == torch.bfloat16:
        return
    for param in model.parameters():
        if param.dtype == torch.bfloat16:
            param.data = param.data.to(dtype)


@contextlib.contextmanager
def experts_layout(cfg: TrainConfig) -> Iterator[None]:
    """Around a base model's from_pretrained: `llama4_linearized_experts` has Llama 4's experts built as
    per-expert linear layers (train/llama4_experts.py); a model with no Llama 4 experts is refused."""
    if not cfg.llama4_linearized_experts:
        yield
        return
    from kubetune.train.llama4_experts import linearized_llama4_experts

    with linearized_llama4_experts() as built:
        yield
    if not built:
        raise UserError(
            "llama4_linearized_experts builds Llama 4's experts as linear layers, and this model has no "
            "Llama 4 experts.",
            "Remove llama4_linearized_experts (it applies to Llama 4 MoE checkpoints only).",
            key="llama4_linearized_experts",
        )
    log.info("llama4_linearized_experts: %d MoE layers with per-expert linear layers", len(built))
