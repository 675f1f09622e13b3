"""Packing boundaries: a packed row gives every example exactly the hidden states it gets alone."""

import logging

import pytest
import torch
from kubetune.data import PackedCollator
from kubetune.train import attention
from kubetune.train.attention import AttentionBackend, check_request, select_backend
from kubetune.train.errors import UserError
from torch.nn.attention import SDPBackend


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
    xformers_attention = False
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


# -- attn_implementation: xformers = SDPA restricted to torch's memory-efficient kernel ----------------


@pytest.mark.parametrize("keys", [{"attn_implementation": "xformers"}, {"xformers_attention": True}])
def test_xformers_selects_sdpa_restricted_to_the_memory_efficient_kernel(keys, caplog):
    from transformers import AttentionInterface

    with caplog.at_level(logging.INFO, logger="kubetune.train.attention"):
        backend = select_backend(Cfg(**keys), cuda=True)
    assert (backend.name, backend.hf_implementation) == ("sdpa_efficient", attention.SDPA_EFFICIENT)
    assert (
        AttentionInterface._global_mapping[attention.SDPA_EFFICIENT] is attention.efficient_attention_forward
    )
    assert "EFFICIENT_ATTENTION" in caplog.text  # logged, not silent
    assert attention.EFFICIENT_KERNELS == (SDPBackend.EFFICIENT_ATTENTION,)


def test_xformers_on_a_machine_without_cuda_is_bad_input():
    with pytest.raises(UserError) as err:
        check_request(Cfg(attn_implementation="xformers"), cuda=False)
    assert err.value.key == "attn_implementation" and "attn_implementation: sdpa" in err.value.fix


def _attention_call(module_groups: int = 2):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 6, 8, generator=generator)
    key, value = (torch.randn(2, 4 // module_groups, 6, 8, generator=generator) for _ in range(2))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = module_groups, True
    return module, query, key, value, mask


def test_the_kernel_restriction_is_in_force_inside_the_attention_call(monkeypatch):
    """CPU has no memory-efficient kernel: restricted to it, SDPA finds no kernel and says so (it does not
    quietly run another one), while plain SDPA on the same inputs runs."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module, query, key, value, mask = _attention_call()
    sdpa_attention_forward(module, query, key, value, mask)
    with pytest.raises(RuntimeError, match="No viable backend"):
        attention.efficient_attention_forward(module, query, key, value, mask)

    entered = []
    real = torch.nn.attention.sdpa_kernel

    def recording(backends, *args, **kwargs):
        entered.append(list(backends))
        return real([*backends, SDPBackend.MATH], *args, **kwargs)  # let CPU compute, record the request

    monkeypatch.setattr(torch.nn.attention, "sdpa_kernel", recording)
    out, _ = attention.efficient_attention_forward(module, query, key, value, mask)
    assert entered == [[SDPBackend.EFFICIENT_ATTENTION]]
    expected, _ = sdpa_attention_forward(module, query, key, value, mask)
    torch.testing.assert_close(out, expected)  # grouped key/value heads repeated as SDPA's path does


def test_xformers_losses_equal_plain_sdpa_on_packed_rows(tiny, monkeypatch):
    """The whole model under the xformers implementation (kernel list widened to math, which CPU has) gives
    SDPA's loss and gradients on a packed batch, and keeps examples apart."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(attention, "EFFICIENT_KERNELS", (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH))
    efficient = select_backend(Cfg(attn_implementation="xformers"), cuda=True)
    packed_vs_alone(tiny["model"], efficient)
    rows = [{"input_ids": list(range(5, 25)), "labels": list(range(5, 25)), "seq_lens": [8, 12]}]
    batch = PackedCollator(pad_token_id=3, pad_to=24)(rows)
    losses = {}
    for backend in (AttentionBackend("sdpa", "sdpa"), efficient):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(
            tiny["model"], attn_implementation=backend.hf_implementation
        )
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], **backend.model_inputs(batch))
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad
        losses[backend.name] = (out.loss.detach(), grad.clone())
    torch.testing.assert_close(losses["sdpa_efficient"][0], losses["sdpa"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["sdpa_efficient"][1], losses["sdpa"][1], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_xformers_on_cuda_runs_the_memory_efficient_kernel_and_matches_sdpa(tiny):
    """On a GPU the restriction leaves exactly the memory-efficient kernel: the profiler sees it, and the
    packed hidden states match each example alone, in float32 and bf16."""
    from torch.profiler import ProfilerActivity, profile

    efficient = select_backend(Cfg(attn_implementation="xformers"), cuda=True)
    packed_vs_alone(tiny["model"], efficient, device="cuda")
    packed_vs_alone(tiny["model"], efficient, atol=3e-2, device="cuda", dtype=torch.bfloat16)
    module, query, key, value, mask = (
        x.cuda() if isinstance(x, torch.Tensor) else x for x in _attention_call()
    )
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        attention.efficient_attention_forward(module, query, key, value, mask)
    assert any("efficient_attention" in event.key for event in prof.key_averages())


def test_xformers_on_a_model_without_registered_attention_functions_is_refused_before_loading(tmp_path):
    """Falcon's attention layers come from its own table of classes, not transformers' registry: the
    registered memory-efficient function cannot reach them, so the run says so instead of crashing."""
    from kubetune.train.attention import check_model_takes
    from kubetune.train.model_options import model_class
    from transformers import AutoModelForCausalLM, FalconConfig, LlamaConfig

    efficient = AttentionBackend("sdpa_efficient", attention.SDPA_EFFICIENT)
    for name, config in (
        ("falcon", FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1)),
        ("llama", LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1)),
    ):
        config.save_pretrained(tmp_path / name)
    falcon = model_class(AutoModelForCausalLM, str(tmp_path / "falcon"), {"trust_remote_code": False})
    llama = model_class(AutoModelForCausalLM, str(tmp_path / "llama"), {"trust_remote_code": False})
    assert (falcon.__name__, llama.__name__) == ("FalconForCausalLM", "LlamaForCausalLM")
    with pytest.raises(UserError) as err:
        check_model_takes(efficient, falcon)
    assert err.value.key == "attn_implementation" and "attn_implementation: sdpa" in err.value.fix
    check_model_takes(efficient, llama)
    check_model_takes(AttentionBackend("sdpa", "sdpa"), falcon)  # only the registered function needs it
    from transformers import GPTJForCausalLM

    with pytest.raises(UserError) as err:
        check_model_takes(efficient, GPTJForCausalLM)  # no SDPA path at all: the fix says eager
    assert "attn_implementation: eager" in err.value.fix


# -- attn_implementation: kernels-community/NAME = a hub flash-attention kernel (GPU-untested here) ---------

HUB = "kernels-community/vllm-flash-attn3"


def test_a_hub_kernel_is_loaded_by_transformers_and_fed_cu_seqlens(monkeypatch, caplog):
    """transformers loads the kernel under its name and wraps it as a flash attention: kubetune passes the
    name through and hands packed rows over as cu_seqlens (flash_varlen), never a dense mask."""
    monkeypatch.setattr("kubetune.train.attention.kernels_installed", lambda: True)
    with caplog.at_level(logging.INFO, logger="kubetune.train.attention"):
        backend = select_backend(Cfg(attn_implementation=HUB), cuda=True)
    assert (backend.name, backend.hf_implementation) == ("flash_varlen", HUB)
    assert HUB in caplog.text
    batch = PackedCollator(pad_token_id=0, pad_to=8)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    inputs = backend.model_inputs(batch)
    assert inputs["attention_mask"] is None and inputs["cu_seq_lens_q"].tolist() == [0, 3, 8]


@pytest.mark.parametrize(
    ("keys", "cuda", "installed", "says"),
    [
        ({}, False, True, "no CUDA GPU"),
        ({"bf16": False}, True, True, "float32"),
        ({}, True, False, "kernels"),
    ],
)
def test_a_hub_kernel_that_cannot_run_here_is_refused_at_start(monkeypatch, keys, cuda, installed, says):
    monkeypatch.setattr("kubetune.train.attention.kernels_installed", lambda: installed)
    monkeypatch.setattr("kubetune.train.attention.torch.cuda.is_bf16_supported", lambda: True)
    with pytest.raises(UserError) as err:
        check_request(Cfg(attn_implementation=HUB, **keys), cuda=cuda)
    assert err.value.key == "attn_implementation" and says in err.value.problem


# -- flex_attn_compile_kwargs: the options of flex attention's torch.compile (GPU-untested here) -----------


def test_flex_attn_compile_kwargs_compile_the_flex_attention_transformers_calls(monkeypatch):
    """transformers' flex attention calls its module-level compile_friendly_flex_attention: with the key, that
    is flex_attention compiled with the given options (recorded here; `backend: eager` so CPU runs it), and
    it computes what flex_attention computes."""
    from kubetune.config.hardware import FlexCompileKwargs
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", hf_flex.compile_friendly_flex_attention)
    seen = []
    real_compile = torch.compile

    def spy(function, **options):
        seen.append((function, options))
        return real_compile(function, backend="eager")

    monkeypatch.setattr(torch, "compile", spy)
    options = FlexCompileKwargs(dynamic=False, mode="max-autotune-no-cudagraphs")
    backend = select_backend(
        Cfg(attn_implementation="flex_attention", flex_attn_compile_kwargs=options), cuda=True
    )
    assert backend.name == "flex"
    assert seen == [(flex_attention, {"dynamic": False, "mode": "max-autotune-no-cudagraphs"})]
    query, key, value = (
        torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)
    )
    out = hf_flex.compile_friendly_flex_attention(query, key, value, training=True)
    torch.testing.assert_close(out, flex_attention(query, key, value))


@pytest.mark.parametrize(("cuda", "bf16"), [(False, True), (True, False)])
def test_flex_attn_compile_kwargs_where_flex_attention_cannot_run_are_refused_at_start(
    monkeypatch, cuda, bf16
):
    from kubetune.config.hardware import FlexCompileKwargs

    monkeypatch.setattr("kubetune.train.attention.torch.cuda.is_bf16_supported", lambda: bf16)
    cfg = Cfg(
        attn_implementation="flex_attention",
        flex_attn_compile_kwargs=FlexCompileKwargs(dynamic=False),
        bf16=bf16,
    )
    with pytest.raises(UserError) as err:
        select_backend(cfg, cuda=cuda)
    assert err.value.key == "flex_attn_compile_kwargs" and "SDPA" in err.value.problem
