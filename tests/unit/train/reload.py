"""Checks that a saved result is the trained one, not merely a loadable one.

A result that lost its trained weights still loads (peft fills missing LoRA tensors with their initial
values, transformers initialises missing weights at random) and still gives finite logits; only a
comparison with the trained model, or with the loaders' own warnings, tells it apart.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch

# What peft and transformers say when a file lacks weights the model has.
LOST_WEIGHTS_SIGNS = ("missing adapter keys", "newly initialized", "were not initialized", "missing_keys")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def fail_on_lost_weights():
    """Any loader warning that weights were missing from the file fails the test."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("transformers", "peft")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    said = [str(w.message) for w in caught] + records.messages
    lost = [message for message in said if any(sign in message.lower() for sign in LOST_WEIGHTS_SIGNS)]
    assert not lost, f"the saved result lacks trained weights: {lost[0][:500]}"


def load_adapter(
    base_model: str, directory: Path | str, *, dtype=torch.float32, device="cpu", quantization_config=None
):
    """The adapter in `directory` on a fresh, un-sharded base, loaded by plain peft (no kubetune code);
    `quantization_config` quantizes the base as it was for training (QLoRA)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with fail_on_lost_weights():
        if quantization_config is not None:
            base = AutoModelForCausalLM.from_pretrained(
                base_model, dtype=dtype, quantization_config=quantization_config, device_map={"": device}
            )
        else:
            base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
        return PeftModel.from_pretrained(base, str(directory))


def load_full_model(directory: Path | str, *, dtype=torch.float32, device="cpu"):
    from transformers import AutoModelForCausalLM

    with fail_on_lost_weights():
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).to(device)


def load_result(base_model: str, directory: Path | str, *, quantization_config=None, **kwargs):
    """Adapter or full model, whichever the run saved."""
    if (Path(directory) / "adapter_config.json").is_file():
        return load_adapter(base_model, directory, quantization_config=quantization_config, **kwargs)
    return load_full_model(directory, **kwargs)


def adapter_tensors(directory: Path | str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


def assert_every_lora_tensor_trained(directory: Path | str, *, expected_lora_layers: int) -> None:
    """Every targeted layer's lora_A and lora_B are in the file, and every lora_B has left its initial
    value (peft initialises lora_B to zeros, so an untrained or lost one is all zeros)."""
    tensors = adapter_tensors(directory)
    lora_a = [key for key in tensors if ".lora_A." in key]
    lora_b = [key for key in tensors if ".lora_B." in key]
    assert len(lora_a) == len(lora_b) == expected_lora_layers, (len(lora_a), len(lora_b), sorted(tensors)[:6])
    untrained = [key for key in lora_b if not tensors[key].float().abs().max() > 0]
    assert not untrained, f"lora_B still at its initial zeros: {untrained[:3]}"


def assert_file_equals_live(directory: Path | str, live_peft_model) -> None:
    """Every tensor in the adapter file equals the live (trained) model's tensor of the same name."""
    from peft import get_peft_model_state_dict

    live = {key: value.detach().cpu() for key, value in get_peft_model_state_dict(live_peft_model).items()}
    saved = adapter_tensors(directory)
    assert set(saved) == set(live), (sorted(set(live) ^ set(saved)))[:5]
    for key, value in saved.items():
        torch.testing.assert_close(value.float(), live[key].float(), rtol=0, atol=0, msg=key)


def assert_reproduces(model, ids: torch.Tensor, trained_logits: torch.Tensor, *, atol: float) -> None:
    """The reloaded model's logits on a fixed batch are the trained model's."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(trained_logits.device)).logits.float()
    difference = (logits - trained_logits.float()).abs().max().item()
    assert difference <= atol, f"reloaded logits differ from the trained ones by {difference:.3g} (> {atol})"


def assert_adapter_matters(
    peft_model, ids: torch.Tensor, trained_logits: torch.Tensor, *, atol: float
) -> None:
    """The base alone (adapter disabled) is far from the trained logits: a tolerance of `atol` cannot
    let a lost or untrained adapter pass."""
    peft_model.eval()
    with torch.no_grad(), peft_model.disable_adapter():
        logits = peft_model(input_ids=ids.to(trained_logits.device)).logits.float()
    gap = (logits - trained_logits.float()).abs().max().item()
    assert gap > 20 * atol, (
        f"the adapter moves the logits by only {gap:.3g}: the test cannot tell it from none"
    )
