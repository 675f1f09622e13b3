"""Tokenizer and model: load, pick dtype and attention, quantize, attach the adapter.

    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer, precision=..., backend=..., device=...)

Every problem the user can fix (a missing directory, no pad token, a GPU-only option on a machine
without CUDA, a library that is not installed) is a `UserError` raised before anything is written.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict, cast

import torch
from torch import nn

from kubetune.config.sharding import fsdp_version
from kubetune.train import fast_paths, model_options, moe_quant, qat
from kubetune.train.attention import SDPA_EFFICIENT, AttentionBackend, check_model_takes
from kubetune.train.errors import UserError

if TYPE_CHECKING:
    from peft import LoftQConfig, PeftMixedModel, PeftModel
    from torch.distributed.device_mesh import DeviceMesh
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

    from kubetune.config import TrainConfig

    # What load_model returns: the transformers model, or the peft model around it (with an adapter).
    TrainableModel = PreTrainedModel | PeftModel | PeftMixedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    load_dtype: torch.dtype  # dtype of the weights as loaded
    mixed_precision: str  # accelerate's autocast setting: "no" | "bf16" | "fp16"


def resolve_precision(cfg: TrainConfig, *, cuda: bool) -> Precision:
    """bf16 / fp16 / auto on a GPU; always float32 on CPU (CPU autocast is slow and rarely what you want)."""
    if not cuda:
        if cfg.bf16 is True or cfg.fp16 or cfg.float16:
            log.warning("bf16/fp16/float16 requested but there is no CUDA GPU: training in float32")
        return Precision(torch.float32, "no")
    auto_bf16 = cfg.bf16 == "auto" and not cfg.fp16 and not cfg.float16
    if cfg.bf16 is True or (auto_bf16 and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, "bf16")
    if cfg.fp16:
        # Loss scaling cannot unscale fp16 gradients, so trainable weights stay float32 in a full fine-tune.
        return Precision(torch.float16 if cfg.adapter else torch.float32, "fp16")
    if cfg.float16:  # Axolotl's non-AMP float16: float16 weights, no autocast, no loss scaling
        return Precision(torch.float16, "no")
    return Precision(torch.float32, "no")


def check_request(cfg: TrainConfig, *, cuda: bool) -> None:
    """Quantization needs CUDA and bitsandbytes; say so before loading anything."""
    qat.check_request(cfg, cuda=cuda)  # nvfp4 QAT: a Blackwell GPU
    if cfg.peft and cfg.peft.loftq_config:
        # peft computes LoftQ's quantization with bitsandbytes on the GPU (it moves each weight to "cuda").
        missing = "a CUDA GPU" if not cuda else None
        if missing is None and importlib.util.find_spec("bitsandbytes") is None:
            missing = "the bitsandbytes package"
        if missing:
            raise UserError(
                f"peft.loftq_config (LoftQ) quantizes the base weights with bitsandbytes on a CUDA GPU, and "
                f"this machine has no {missing.removeprefix('a ').removeprefix('the ')}.",
                "Run on a GPU node with bitsandbytes (kubetune[gpu]), or remove peft.loftq_config to start "
                "the adapter from peft's default init.",
                key="peft.loftq_config",
            )
    moe_quant.check_request(cfg, cuda=cuda, cpu_nf4=cpu_nf4_requested())
    quantized = cfg.load_in_4bit or cfg.load_in_8bit or cfg.adapter == "qlora"
    if not quantized:
        return
    key = "adapter" if cfg.adapter == "qlora" else ("load_in_4bit" if cfg.load_in_4bit else "load_in_8bit")
    if not cuda and cfg.load_in_4bit and cpu_nf4_requested():
        log.warning("%s=1: 4-bit bitsandbytes weights on the CPU (slow; for tests)", CPU_NF4_ENV)
    elif not cuda:
        raise UserError(
            f"{key} asks for a bitsandbytes-quantized base model, which needs a CUDA GPU, and this machine "
            "has none.",
            "Run on a GPU node, or train a plain LoRA on CPU: `adapter: lora` with `load_in_4bit: false` "
            "and `load_in_8bit: false`.",
            key=key,
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{key} needs the bitsandbytes package, which is not installed.",
            "pip install 'kubetune[gpu]' (or just bitsandbytes) in the training image, or use `adapter: lora` "
            "without 4/8-bit loading.",
            key=key,
        )


# Test and development switch: bitsandbytes' CPU backend runs nf4 (0.50), slowly; the CPU tests use it
# to run a QLoRA base under FSDP on CPU processes (see docs/training.md).
CPU_NF4_ENV = "KUBETUNE_CPU_NF4"


def cpu_nf4_requested() -> bool:
    import os

    return os.environ.get(CPU_NF4_ENV, "").lower() in ("1", "true", "yes")


def model_source(cfg: TrainConfig, value: str, key: str) -> str:
    """A local directory (resolved against the config's directory) or a hub id, checked for existence;
    for an object-store prefix (s3://, gs://, az://) the local copy of it (the job's fetch step made it,
    or this downloads it once into the source cache)."""
    from kubetune.config.sources import is_object_store_uri

    if is_object_store_uri(value):
        return object_store_copy(cfg, value, key)
    path = cfg.resolve_path(value)
    if path.is_dir():
        if key == "base_model" and cfg.revision_of_model:
            raise UserError(
                f"revision_of_model pins a hub revision, but base_model is the local directory {path}.",
                "Remove revision_of_model (the directory is what it is), or name the hub id in base_model.",
                key="revision_of_model",
            )
        return str(path)
    if path.exists():
        raise UserError(
            f"{key} {value!r} is a file ({path}), not a model directory.",
            f"Point {key} at the directory.",
            key=key,
        )
    looks_local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
    if looks_local:
        raise UserError(
            f"{key} is the directory {path}, which does not exist.",
            f"Fix the path in {key} (relative paths resolve against the config file's directory), or mount "
            "the volume holding the model there.",
            key=key,
        )
    return value  # a hub id


def object_store_copy(cfg: TrainConfig, value: str, key: str) -> str:
    """The local directory holding the objects under the prefix `value` (a model or tokenizer)."""
    from kubetune import objectstore

    if key == "base_model" and cfg.revision_of_model:
        raise UserError(
            f"revision_of_model pins a hub revision, but base_model is the object-store prefix {value}.",
            "Remove revision_of_model (the prefix's objects are what they are), or name the hub id in base_model.",
            key="revision_of_model",
        )
    try:
        local = objectstore.fetch_source(value)
    except objectstore.ObjectStoreError as err:
        raise UserError(f"{key}: {err.message}", err.fix, key=key) from None
    if not local.is_dir():
        raise UserError(
            f"{key} {value!r} names one object, not a model directory.",
            f"Point {key} at the prefix holding config.json and the weights (e.g. s3://bucket/models/name/).",
            key=key,
        )
    return str(local)


def _load_error(key: str, source: str, err: Exception) -> UserError:
    return UserError(
        f"could not load {key} {source!r}: {err}",
        f"Check that {key} names a local model directory or a hub id this machine can reach (with HF_TOKEN "
        "set for gated models).",
        key=key,
    )


def check_pad_token(cfg: TrainConfig) -> None:
    """Batching needs a pad token: the tokenizer's own, or `special_tokens.pad_token` from the config.

    A tokenizer without one is bad input (exit 2) rather than silently padded with eos: the fix is one
    config line, and it keeps the choice visible in the config (and in the prepared-data cache key).
    """
    if cfg.special_tokens and cfg.special_tokens.pad_token:
        return
    if cfg.tokenizer_use_mistral_common:  # mistral-common's tokenizers always have <pad>
        return
    import transformers

    # The same source kubetune.data.load_tokenizer reads (Axolotl's order).
    key = next(k for k in ("tokenizer_config", "base_model_config", "base_model") if getattr(cfg, k))
    source = model_source(cfg, getattr(cfg, key), key)
    tokenizer_cls = getattr(transformers, cfg.tokenizer_type or "AutoTokenizer", None)
    if tokenizer_cls is None:
        raise UserError(
            f"tokenizer_type {cfg.tokenizer_type!r} is not a transformers tokenizer class.",
            "Use AutoTokenizer (the default) or a class transformers exports, e.g. PreTrainedTokenizerFast.",
            key="tokenizer_type",
        )
    try:
        tokenizer = tokenizer_cls.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code, **cfg.revision_for(source)
        )
    except (OSError, ValueError) as err:
        raise _load_error(key, source, err) from err
    if tokenizer.pad_token is None:
        suggestion = tokenizer.eos_token or "<pad>"
        raise UserError(
            f"the tokenizer of {source} has no pad token, which batching needs.",
            f'Add to the config:  special_tokens: {{pad_token: "{suggestion}"}}  (the eos token is the usual '
            "choice; padding never carries a label, so it is never trained on).",
            key="special_tokens.pad_token",
        )


def load_tokenizer(cfg: TrainConfig) -> PreTrainedTokenizerBase:
    """kubetune.data's tokenizer (the prepared-data cache is keyed by it), with load errors as UserError."""
    from kubetune.data import load_tokenizer as data_load_tokenizer

    try:
        return data_load_tokenizer(cfg)
    except (OSError, ValueError) as err:
        raise _load_error("base_model", cfg.tokenizer_config or cfg.base_model, err) from err


def load_model(
    cfg: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    precision: Precision,
    backend: AttentionBackend,
    device: torch.device | None,
    tp_mesh: DeviceMesh | None = None,
) -> nn.Module:
    """The model ready for training: trainable parameters are exactly what the config trains.

    `device`: where to load the weights directly (one process per GPU); None loads on CPU and leaves
    placement to the distributed wrapper (FSDP, DeepSpeed). `tp_mesh`: the tensor-parallel dimension of
    the run's mesh; the model is sharded over it by its transformers `tp_plan` (DTensor layers).

    The order of the steps is part of the result: k-bit preparation freezes (outside bf16: upcasts) the
    base before the adapter is attached, the adapter's dtype is chosen from the base as prepared (FSDP1
    needs one dtype per wrapped block), and the speed-ups replace or compile layers the adapter wraps.
    """
    model, kbit = load_base(cfg, precision=precision, backend=backend, device=device, tp_mesh=tp_mesh)
    fit_tokenizer(cfg, model, tokenizer)
    model = prepare_base(cfg, model, kbit=kbit, precision=precision)
    trained = select_trainable(cfg, model)
    speed_up(cfg, trained, precision=precision, sharded=device is None)
    return trained


def load_base(
    cfg: TrainConfig,
    *,
    precision: Precision,
    backend: AttentionBackend,
    device: torch.device | None,
    tp_mesh: DeviceMesh | None,
) -> tuple[PreTrainedModel, bool]:
    """The base model as transformers loads it (dtype, attention implementation, `model_config`,
    quantization, placement), and whether its weights are bitsandbytes-quantized (k-bit)."""
    import transformers

    source = model_source(cfg, cfg.base_model, "base_model")
    model_cls = getattr(transformers, cfg.model_type or "AutoModelForCausalLM", None)
    if model_cls is None:
        raise UserError(
            f"model_type {cfg.model_type!r} is not a transformers model class.",
            "Use AutoModelForCausalLM (the default) or a class transformers exports, e.g. LlamaForCausalLM.",
            key="model_type",
        )
    kwargs: model_options.LoadOptions = {
        "dtype": precision.load_dtype,
        "attn_implementation": backend.hf_implementation,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if revision := cfg.revision_for(source).get("revision"):
        kwargs["revision"] = revision
    if cfg.base_model_config or cfg.model_config_overrides:  # Axolotl's model_config: set on the config
        key = "base_model_config" if cfg.base_model_config else "base_model"
        kwargs["config"] = model_options.model_config(
            model_source(cfg, getattr(cfg, key), key),
            cfg.model_config_overrides,
            cfg.trust_remote_code,
            cfg.revision_for(getattr(cfg, key)),
        )
    if backend.hf_implementation == SDPA_EFFICIENT:
        check_model_takes(backend, model_options.model_class(model_cls, source, kwargs))
    quantization = quantization_config(cfg, precision)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    elif (unpacked := model_options.checkpoint_quantization(cfg)) is not None:
        kwargs["quantization_config"] = unpacked  # unpacked to plain weights: not `quantization` below
    if tp_mesh is not None:
        kwargs |= {"tp_plan": "auto", "device_mesh": tp_mesh}
    elif device is not None:
        kwargs["device_map"] = {"": device}
    model: PreTrainedModel
    try:
        with model_options.experts_layout(cfg), moe_quant.quantized_experts(cfg) as experts:
            if cfg.reinit_weights:  # the architecture only: new weights drawn from the seed (set before this)
                model = model_options.new_model(model_cls, source, kwargs, device)
            else:
                model = model_cls.from_pretrained(source, **kwargs)
        moe_quant.finish(experts, model)  # quantize_moe_experts
    except UserError:
        raise  # already names its key and fix (a ValueError too)
    except (OSError, ValueError) as err:
        raise _load_error("base_model", source, err) from err
    if quantization is None and "quantization_config" in kwargs:
        model_options.match_unpacked_dtype(model, precision.load_dtype)
    model.config.use_cache = False  # training never reuses a KV cache
    model_options.router_aux_loss(model)  # output_router_logits on a model without that loss: refused now
    return model, quantization is not None


def fit_tokenizer(cfg: TrainConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Embedding rows for every token of the tokenizer, and its pad / bos / eos ids on the model config."""
    # transformers types get_input_embeddings() as any nn.Module; a causal LM's is an nn.Embedding.
    embeddings = cast("nn.Embedding", model.get_input_embeddings())
    rows, before = model_options.embedding_rows(cfg, tokenizer), embeddings.num_embeddings
    if rows > before:  # added tokens, or resize_token_embeddings_to_32x rounding up (as Axolotl resizes)
        log.info("resizing the embeddings from %d to %d rows", before, rows)
        model.resize_token_embeddings(rows)
        if len(tokenizer) > before and cfg.adapter and not _saves_embeddings(cfg):
            log.warning(
                "new tokens were added but lora_modules_to_save does not list the embedding and output layers: "
                "their new rows stay untrained (add `lora_modules_to_save: [embed_tokens, lm_head]`)"
            )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config, name, getattr(tokenizer, name))


def prepare_base(
    cfg: TrainConfig, model: PreTrainedModel, *, kbit: bool, precision: Precision
) -> PreTrainedModel:
    """A k-bit base frozen for training (outside bf16 through peft, which also upcasts the frozen
    weights to float32), and gradient checkpointing switched on when the config asks for it."""
    checkpointing = {
        "use_reentrant": bool(
            cfg.gradient_checkpointing_kwargs and cfg.gradient_checkpointing_kwargs.use_reentrant
        )
    }
    if kbit and precision.mixed_precision != "bf16":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif kbit:
        # peft's prepare_model_for_kbit_training would also upcast every frozen bf16 weight (embeddings,
        # output head, norms) to float32: +2 GiB on an 8B model for no gain in bf16, where nothing
        # frozen is ever updated. Freeze and checkpoint only.
        for param in model.parameters():
            param.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    if cfg.qat is not None:  # fake-quantized linear layers (torchao), before the adapter and FSDP or DDP
        qat.prepare(cfg, model)
    return model


def select_trainable(cfg: TrainConfig, model: PreTrainedModel) -> TrainableModel:
    """What trains: the adapter when the config has one (the model becomes a PeftModel), narrowed by
    `unfrozen_parameters`; without an adapter every weight, or those `unfrozen_parameters` matches."""
    trained: TrainableModel = attach_adapter(cfg, model) if cfg.adapter else model
    if cfg.unfrozen_parameters:  # only the matching weights (with an adapter: adapter weights) train
        model_options.freeze_all_but(
            trained, cfg.unfrozen_parameters, checkpointing=cfg.gradient_checkpointing
        )
    return trained


def speed_up(cfg: TrainConfig, model: nn.Module, *, precision: Precision, sharded: bool) -> None:
    """Same result, faster, in place: fused LoRA layers, liger's fused kernels, regional torch.compile.
    `sharded`: FSDP / DeepSpeed will wrap the model (it was loaded on the CPU for them)."""
    switches = fast_paths.switches(cfg)  # the config's liger_* / lora_*_kernel keys over the defaults
    if cfg.adapter:
        # By default eager only: with torch_compile the compiler fuses peft's element-wise adds into their
        # neighbours itself, and the fused layers' addmm measured 3% slower there (H200, 8B).
        # One process per GPU or DDP only: the fused layers read the weights directly, bypassing the
        # hooks in which FSDP / DeepSpeed gather sharded weights.
        groups = fast_paths.lora_groups(switches, default_on=not cfg.torch_compile, sharded=sharded)
        if groups:
            from kubetune.train.lora_fused import fuse_lora_layers

            fuse_lora_layers(model, groups=groups)
    kinds = fast_paths.liger_kinds(
        switches,
        default_on=wants_fused_kernels(cfg, precision, cuda=torch.cuda.is_available()),
        cuda=torch.cuda.is_available(),
        compiled=cfg.torch_compile,
    )
    if kinds:
        from kubetune.train.kernels import apply_liger_kernels

        apply_liger_kernels(model, kinds)
    if cfg.torch_compile:
        # Regional compilation: each decoder layer once (same code, so one graph), not the whole model.
        if cfg.torch_compile_mode:
            log.info("torch.compile mode: %s", cfg.torch_compile_mode)
        for layer in _decoder_layers(model):
            layer.compile(**compile_options(cfg))


def compile_options(cfg: TrainConfig) -> dict[str, str]:
    """Keyword arguments of each decoder layer's torch.compile: `mode` when torch_compile_mode sets it."""
    return {"mode": cfg.torch_compile_mode} if cfg.torch_compile_mode else {}


def wants_fused_kernels(cfg: TrainConfig, precision: Precision, *, cuda: bool) -> bool:
    """Fused Triton kernels for RMSNorm / SwiGLU / RoPE (+17% tokens/s on an 8B LoRA, H200) go in on a
    GPU in bf16/fp16 when the compiler is off; with `torch_compile` the compiler fuses those ops itself."""
    return cuda and not cfg.torch_compile and precision.mixed_precision != "no"


def quantization_config(cfg: TrainConfig, precision: Precision) -> BitsAndBytesConfig | None:
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = (
        getattr(torch, cfg.bnb_4bit_compute_dtype) if cfg.bnb_4bit_compute_dtype else precision.load_dtype
    )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type or "nf4",
        bnb_4bit_use_double_quant=True
        if cfg.bnb_4bit_use_double_quant is None
        else cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        # FSDP shards the packed 4-bit weights as this dtype, so it must match the other parameters.
        bnb_4bit_quant_storage=precision.load_dtype if cfg.fsdp else torch.uint8,
    )


def lora_target_modules(cfg: TrainConfig, model: PreTrainedModel) -> list[str] | str | None:
    """The configured targets; lora_target_linear adds every linear layer except the output head."""
    targets = cfg.lora_target_modules
    if not cfg.lora_target_linear:
        return list(targets) if isinstance(targets, list) else targets
    if isinstance(targets, str):
        raise UserError(
            "lora_target_linear cannot be combined with a regular expression in lora_target_modules.",
            "Give lora_target_modules as a list of module names, or drop one of the two keys.",
            key="lora_target_modules",
        )
    head = model.get_output_embeddings()
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }
    head_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    return sorted((linear - head_names) | set(targets or ()))


def fsdp_needs_uniform_dtype(cfg: TrainConfig, model: nn.Module) -> bool:
    """FSDP1 with a half-precision base: adapter weights must stay in the base's dtype."""
    if not cfg.fsdp or fsdp_version(cfg) == 2:
        return False
    return next(model.parameters()).dtype in (torch.bfloat16, torch.float16)


def attach_adapter(cfg: TrainConfig, model: PreTrainedModel) -> PeftModel | PeftMixedModel:
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.lora_model_dir:
        source = model_source(cfg, cfg.lora_model_dir, "lora_model_dir")
        log.info("continuing the adapter in %s", source)
        try:
            return PeftModel.from_pretrained(model, source, is_trainable=True)
        except (OSError, ValueError) as err:
            raise _load_error("lora_model_dir", source, err) from err
    targets = lora_target_modules(cfg, model)
    if not targets and cfg.lora_target_parameters:
        targets = []  # LoRA on parameters only (peft: an empty target_modules, not its per-model default)
    elif not targets:
        raise UserError(
            "an adapter needs target modules, and none are configured.",
            "Set `lora_target_linear: true` (every linear layer) or list them, e.g. "
            "`lora_target_modules: [q_proj, k_proj, v_proj, o_proj]`.",
            key="lora_target_modules",
        )
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        target_parameters=list(cfg.lora_target_parameters) if cfg.lora_target_parameters else None,
        modules_to_save=list(cfg.lora_modules_to_save) if cfg.lora_modules_to_save else None,
        fan_in_fan_out=cfg.lora_fan_in_fan_out,
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        bias="none",
        exclude_modules=moe_quant.LORA_EXCLUDED if cfg.quantize_moe_experts else None,
        **loftq_options(cfg),
    )
    # FSDP1 flattens each wrapped block's parameters into one tensor of one dtype; peft's default upcast
    # of the adapter weights to float32 beside bf16/fp16 base weights makes that impossible.
    keep_adapter_dtype = fsdp_needs_uniform_dtype(cfg, model)
    try:
        return get_peft_model(model, lora, autocast_adapter_dtype=not keep_adapter_dtype)
    except ValueError as err:  # e.g. a target module name that matches nothing
        raise UserError(
            f"the adapter cannot be attached: {err}",
            "Check lora_target_modules / lora_modules_to_save against the model's module names.",
            key="lora_target_modules",
        ) from err


class LoftQOptions(TypedDict, total=False):
    """LoraConfig's LoftQ arguments; empty: peft's default init."""

    init_lora_weights: Literal["loftq"]
    loftq_config: LoftQConfig


def loftq_options(cfg: TrainConfig) -> LoftQOptions:
    """LoraConfig arguments of `peft.loftq_config`: peft's LoftQ init (one iteration, as Axolotl)."""
    if not (cfg.peft and cfg.peft.loftq_config):
        return {}
    from peft import LoftQConfig

    bits = cfg.peft.loftq_config.loftq_bits
    log.info(
        "lora: LoftQ init (%d-bit NF4 base weights, adapter = their quantization error's top-r part)", bits
    )
    return {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(loftq_bits=bits)}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _saves_embeddings(cfg: TrainConfig) -> bool:
    saved = set(cfg.lora_modules_to_save or ())
    return bool(saved & {"embed_tokens", "wte", "word_embeddings"}) and bool(
        saved & {"lm_head", "output", "embed_out"}
    )


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
