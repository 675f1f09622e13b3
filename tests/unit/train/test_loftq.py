"""peft.loftq_config: the adapter starts from LoftQ (base + adapter closer to the original weights than the
NF4-quantized base alone), and merge / generate rebuild the quantized base the adapter trained on."""

from __future__ import annotations

import inspect

import pytest
import torch
from kubetune.train.errors import UserError

LOFTQ = {
    "lora_r": 8,
    "lora_alpha": 8,
    "lora_target_linear": True,
    "peft": {"loftq_config": {"loftq_bits": 4}},
}


@pytest.fixture
def loftq_on_cpu(monkeypatch):
    """peft computes LoftQ on the device named "cuda" (a string in its code); bitsandbytes has a CPU NF4
    backend, so this runs peft's own loftq_init on CPU, compiled from its source with that string swapped."""
    import peft.tuners.lora.layer as layer
    import peft.utils.loftq_utils as loftq_utils

    source = inspect.getsource(loftq_utils.loftq_init)
    device_line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    assert device_line in source, "peft's loftq_init changed: update this fixture"
    namespace = dict(vars(loftq_utils))
    exec(
        compile(source.replace(device_line, 'compute_device = "cpu"'), loftq_utils.__file__, "exec"),
        namespace,
    )
    monkeypatch.setattr(layer, "loftq_init", namespace["loftq_init"])


def _base(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32)


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@pytest.mark.parametrize(("alpha", "bound"), [(8, 0.95), (4, 0.99)])  # scale 1, and 0.5 as loftq.yml's
def test_loftq_init_starts_closer_to_the_original_weights_than_the_quantized_base(
    tiny, make_config, loftq_on_cpu, alpha, bound
):
    from kubetune.train.model import attach_adapter

    cfg, _ = make_config("loftq", lora_target_modules=None, **{**LOFTQ, "lora_alpha": alpha})
    default_cfg, _ = make_config("default", lora_target_modules=None, **{**LOFTQ, "peft": None})
    original = {name: p.detach().clone() for name, p in _base(tiny).named_parameters()}
    loftq = attach_adapter(cfg, _base(tiny))
    default = attach_adapter(default_cfg, _base(tiny))

    layers = _lora_layers(loftq)
    assert len(layers) == len(_lora_layers(default)) > 0
    ratios = []
    for name, module in layers.items():
        # peft's default init: B = 0
        assert torch.count_nonzero(_lora_layers(default)[name].lora_B["default"].weight) == 0
        assert torch.count_nonzero(module.lora_B["default"].weight) > 0  # LoftQ: B is not zero
        key = name.removeprefix("base_model.model.") + ".weight"
        weight, quantized = original[key], module.get_base_layer().weight.detach()
        assert not torch.equal(quantized, weight)  # the base now holds the NF4 round trip Q(W)
        with torch.no_grad():
            error_base = (weight - quantized).norm()
            error_adapted = (weight - quantized - module.get_delta_weight("default")).norm()
        assert error_adapted < error_base
        ratios.append(float(error_adapted / error_base))
    # Every weight: the adapter takes off part of the NF4 error.
    print(f"lora_alpha {alpha}: error ratio {min(ratios):.3f}-{max(ratios):.3f}")
    assert max(ratios) < bound, ratios


def test_merge_and_generate_rebuild_the_quantized_base_the_adapter_trained_on(
    tiny, make_config, loftq_on_cpu, tmp_path, monkeypatch
):
    from kubetune.train.model import attach_adapter
    from kubetune.train.results import load_base_with_adapter
    from transformers import AutoTokenizer

    cfg, _ = make_config("loftq", lora_target_modules=None, **LOFTQ)
    trained = attach_adapter(cfg, _base(tiny)).eval()
    trained.save_pretrained(tmp_path / "out")
    monkeypatch.undo()  # reloading needs no LoftQ init (peft's would want CUDA): kubetune rebuilds Q(W)
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    reloaded = load_base_with_adapter(
        cfg, tmp_path / "out", tokenizer, dtype=torch.float32, device=torch.device("cpu")
    )
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        expected, got = trained(input_ids=ids).logits, reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    for name, module in _lora_layers(reloaded).items():
        torch.testing.assert_close(
            module.get_base_layer().weight, _lora_layers(trained)[name].get_base_layer().weight
        )


def test_loftq_needs_a_gpu_and_says_so_before_loading(make_config):
    from kubetune.train.model import check_request

    cfg, _ = make_config("loftq", lora_target_modules=None, **LOFTQ)
    with pytest.raises(UserError) as err:
        check_request(cfg, cuda=False)
    assert err.value.key == "peft.loftq_config" and "CUDA GPU" in err.value.problem


def test_loftq_becomes_the_lora_config_peft_gets(make_config):
    from kubetune.train.model import loftq_options

    cfg, _ = make_config("loftq", lora_target_modules=None, **LOFTQ)
    options = loftq_options(cfg)
    assert options["init_lora_weights"] == "loftq" and options["loftq_config"].loftq_bits == 4
    plain, _ = make_config("plain")
    assert loftq_options(plain) == {}


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ({"adapter": "qlora", "load_in_4bit": True}, "peft.loftq_config"),
        ({"lora_model_dir": "adapter-dir"}, "peft.loftq_config"),
        ({"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_modules": None}, "peft"),
        ({"peft": {"loftq_config": {"loftq_bits": 8}}}, "peft.loftq_config.loftq_bits"),
    ],
)
def test_loftq_combinations_without_meaning_are_refused(seed_mapping, keys, path):
    from kubetune.config import validate_mapping

    mapping = {**seed_mapping, "peft": {"loftq_config": {"loftq_bits": 4}}, **keys}
    mapping = {key: value for key, value in mapping.items() if value is not None}
    problems = validate_mapping(mapping)
    assert path in [problem.path for problem in problems], problems
