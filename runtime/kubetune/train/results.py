"""Loading what a run left in output_dir: the base model + adapter, or the fully fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kubetune.train.errors import UserError
from kubetune.train.model import model_source
from kubetune.train.model_options import experts_layout

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase
    from transformers.models.auto.modeling_auto import _BaseModelWithGenerate

    from kubetune.config import TrainConfig


def result_kind(output_dir: Path) -> str | None:
    """ "adapter", "model" or None (nothing trained there yet)."""
    if (output_dir / "adapter_config.json").is_file():
        return "adapter"
    if (output_dir / "config.json").is_file():
        return "model"
    return None


def require_result(cfg: TrainConfig) -> tuple[Path, str]:
    output_dir = cfg.resolve_path(cfg.output_dir)
    kind = result_kind(output_dir)
    if kind is None:
        raise UserError(
            f"output_dir {output_dir} holds no trained adapter or model.",
            "Run `kubetune train` with this config first (or point output_dir at a finished run).",
            key="output_dir",
        )
    return output_dir, kind


def inference_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    if cfg.bf16 is True or (cfg.bf16 == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16 if cfg.fp16 else torch.float32


def load_tokenizer(output_dir: Path, cfg: TrainConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer the run saved (special tokens included); with tokenizer_use_mistral_common the
    saved tekken.json through mistral-common, as the run used it (an adapter's folder has no model
    config from which AutoTokenizer could tell)."""
    if cfg is not None and cfg.tokenizer_use_mistral_common:
        from kubetune.data.tokenizer import load_mistral_common_tokenizer

        return load_mistral_common_tokenizer(str(output_dir), {})
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(output_dir)


def load_base_with_adapter(
    cfg: TrainConfig,
    output_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype | str,
    device: torch.device,
) -> PeftModel:
    """The base model (unquantized, even after a QLoRA run) with the trained adapter attached."""
    import transformers
    from peft import PeftConfig, PeftModel

    model_cls = getattr(transformers, cfg.model_type or "AutoModelForCausalLM")
    source = model_source(cfg, cfg.base_model, "base_model")
    with experts_layout(cfg):  # llama4_linearized_experts: the layout the adapter trained on
        base = model_cls.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **cfg.revision_for(source)
        ).to(device)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    config = PeftConfig.from_pretrained(str(output_dir))
    loftq = getattr(config, "init_lora_weights", None) == "loftq"
    if loftq:  # peft would run LoftQ's init again on load, on "cuda" only; the weights are loaded anyway
        config.init_lora_weights = True
    model = PeftModel.from_pretrained(base, output_dir, config=config).eval()
    if loftq:
        quantize_loftq_base(model)
    return model


def quantize_loftq_base(model: PeftModel) -> int:
    """Give a LoftQ adapter the base it trained on: peft's LoftQ init replaced every targeted weight W by
    its NF4 round trip Q(W) (one iteration: bitsandbytes Params4bit, blocks of 64, no double quant), and
    the adapter learned on top of Q(W). Applied to W itself the adapter would add the quantization error a
    second time. The same round trip (here on the CPU, where merge runs) reproduces Q(W). Returns the count."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and module.lora_A:
            param = module.get_base_layer().get_parameter("weight")
            weight = param.data
            packed = bnb.nn.Params4bit(
                weight.detach().to("cpu", torch.float32),
                requires_grad=False,
                compress_statistics=False,
                quant_type="nf4",
            )
            # bitsandbytes 0.50 types Params4bit.to's self as an nn.Module (its TypeVar T), which it is not.
            packed = packed.to(weight.device)  # type: ignore[misc]
            dequantized = bnb.functional.dequantize_4bit(packed.data, packed.quant_state)
            param.data = dequantized.to(weight.dtype)
            count += 1
    return count


def load_result(
    cfg: TrainConfig, *, device: torch.device
) -> tuple[PeftModel | _BaseModelWithGenerate, PreTrainedTokenizerBase]:
    """(model, tokenizer) ready for generation."""
    from transformers import AutoModelForCausalLM

    output_dir, kind = require_result(cfg)
    tokenizer = load_tokenizer(output_dir, cfg)
    dtype = inference_dtype(cfg, device)
    if kind == "adapter":
        model = load_base_with_adapter(cfg, output_dir, tokenizer, dtype=dtype, device=device)
    else:
        with experts_layout(cfg):  # a full fine-tune saved its linearized experts as such
            loaded = AutoModelForCausalLM.from_pretrained(output_dir, dtype=dtype)
            # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to): mypy reads the
            # wrapper as a plain callable whose first argument is the model.
            model = loaded.to(device).eval()  # type: ignore[arg-type]
    return model, tokenizer
