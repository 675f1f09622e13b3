"""Packing boundaries: a packed row gives every example exactly the hidden states it gets alone."""

import pytest
import torch
from kubetune.data import PackedCollator
from kubetune.train.attention import AttentionBackend, check_request, select_backend
from kubetune.train.errors import UserError


def packed_vs_alone(
    model_dir: str, backend: AttentionBackend, atol: float = 2e-5, *, device="cpu", dtype=None
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=backend.hf_implementation, dtype=dtype or torch.float32
    )
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (7, 12, 5, 9)]
    rows = [
        {"input_ids": examples[0] + examples[1], "labels": examples[0] + examples[1], "seq_lens": [7, 12]},
        {"input_ids": examples[2] + examples[3], "labels": examples[2] + examples[3], "seq_lens": [5, 9]},
    ]
    batch = PackedCollator(pad_token_id=3, pad_to=24)(rows)  # both rows end in a padding segment
    batch = {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }
    with torch.no_grad():
        packed = model.model(input_ids=batch["input_ids"], use_cache=False, **backend.model_inputs(batch))
        alone = [
            model.model(input_ids=torch.tensor([ids], device=device), use_cache=False).last_hidden_state[0]
            for ids in examples
        ]
    hidden = packed.last_hidden_state.float()
    alone = [states.float() for states in alone]
    assert torch.isfinite(hidden).all()  # the padding segment attends to itself: no fully masked row
    torch.testing.assert_close(hidden[0, :7], alone[0], atol=atol, rtol=0)
    torch.testing.assert_close(hidden[0, 7:19], alone[1], atol=atol, rtol=0)
    torch.testing.assert_close(hidden[1, :5], alone[2], atol=atol, rtol=0)
    torch.testing.assert_close(hidden[1, 5:14], alone[3], atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["sdpa", "eager"])
def test_packed_rows_never_attend_across_examples(tiny, name):
    packed_vs_alone(tiny["model"], AttentionBackend(name, name))


class Cfg:
    flash_attention = False
    sdp_attention = False
    attn_implementation = None
    bf16 = True  # a GPU run in half precision unless a test says otherwise
    fp16 = False

    def __init__(self, **keys):
        self.__dict__.update(keys)


def test_cpu_defaults_to_sdpa_and_honours_an_explicit_choice():
    assert select_backend(Cfg(), cuda=False).name == "sdpa"
    assert select_backend(Cfg(attn_implementation="eager"), cuda=False).name == "eager"
    assert select_backend(Cfg(sdp_attention=True), cuda=True).name == "sdpa"


def test_flash_without_flash_attn_falls_back_to_flex_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr("kubetune.train.attention.flash_attn_installed", lambda: False)
    monkeypatch.setattr("kubetune.train.attention.torch_varlen_available", lambda: False)
    backend = select_backend(Cfg(flash_attention=True), cuda=True)
    assert (backend.name, backend.hf_implementation) == ("flex", "flex_attention")
    assert "falling back to flex attention" in caplog.text


def test_flash_with_flash_attn_uses_the_varlen_kernel(monkeypatch):
    monkeypatch.setattr("kubetune.train.attention.flash_attn_installed", lambda: True)
    backend = select_backend(Cfg(attn_implementation="flash_attention_2"), cuda=True)
    assert backend.name == "flash_varlen"
    batch = PackedCollator(pad_token_id=0, pad_to=8)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    inputs = backend.model_inputs(batch)
    assert inputs["attention_mask"] is None and inputs["max_length_q"] == 5
    assert inputs["cu_seq_lens_q"].tolist() == [0, 3, 8]


def test_flash_attention_on_a_machine_without_cuda_is_bad_input():
    with pytest.raises(UserError) as err:
        check_request(Cfg(flash_attention=True), cuda=False)
    assert "CUDA" in err.value.problem and "flash_attention: false" in err.value.fix
