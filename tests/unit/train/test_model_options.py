"""Axolotl's model-side options on the tiny model: unfrozen_parameters, lora_target_parameters,
resize_token_embeddings_to_32x, activation offloading."""

from __future__ import annotations

import pytest
import torch
from kubetune.config.adapter import unfrozen_parameter_regex
from kubetune.train import model_options
from kubetune.train.attention import AttentionBackend
from kubetune.train.errors import UserError
from kubetune.train.loss import CausalLMLoss, shift_targets
from kubetune.train.model import Precision, load_model, load_tokenizer

SDPA = AttentionBackend("sdpa", "sdpa")
FP32 = Precision(torch.float32, "no")
FULL = {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_modules": None}


def load(cfg):
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer, precision=FP32, backend=SDPA, device=None), tokenizer


def backward(model) -> None:
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    CausalLMLoss(model)(
        input_ids=ids, targets=shift_targets(ids, positions), position_ids=positions
    ).backward()


def test_unfrozen_parameter_patterns_read_as_axolotl_reads_them():
    assert unfrozen_parameter_regex("^lm_head.weight$").match("lm_head.weight")
    assert not unfrozen_parameter_regex("^lm_head.weight$").match("lm_headXweight")  # `.` is literal
    assert unfrozen_parameter_regex("model.layers.2[0-9]+.mlp").match("model.layers.25.mlp.up_proj.weight")
    assert not unfrozen_parameter_regex("embed_tokens").match("model.embed_tokens.weight")  # from the start
    assert unfrozen_parameter_regex("model.layers.+.mlp").match("model.layers.0.mlp.up_proj.weight")  # `.+`


@pytest.mark.parametrize("checkpointing", [False, True])
def test_unfrozen_parameters_train_only_the_matching_weights(make_config, checkpointing):
    cfg, _ = make_config(
        **FULL,
        unfrozen_parameters=["^lm_head.weight$", "model.layers.1.mlp"],
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    model, _ = load(cfg)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "lm_head.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    model.train()
    backward(model)
    # Gradients reach the unfrozen layer through the frozen embeddings, reentrant checkpointing too.
    assert {name for name, p in model.named_parameters() if p.grad is not None} == trainable
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in trainable)


def test_with_an_adapter_unfrozen_parameters_narrow_the_adapter_weights(make_config):
    cfg, _ = make_config(lora_target_linear=True, unfrozen_parameters=["^model.layers.1.", "lm_head"])
    model, _ = load(cfg)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # Base-model names; only LoRA weights of layer 1 (lm_head has none and stays frozen).
    assert trainable and all(".layers.1." in name and ".lora_" in name for name in trainable)
    all_lora = {name for name, _ in model.named_parameters() if ".lora_" in name}
    assert any(".layers.0." in name for name in all_lora - trainable)


def test_unfrozen_parameters_that_match_nothing_are_refused(make_config):
    cfg, _ = make_config(**FULL, unfrozen_parameters=["layers.0"])  # names start with model.
    with pytest.raises(UserError, match="matches none of the model's parameters"):
        load(cfg)


def test_lora_target_parameters_put_lora_on_those_parameters(make_config):
    cfg, _ = make_config(lora_target_modules=None, lora_target_parameters=["mlp.down_proj.weight"])
    model, _ = load(cfg)
    assert model.peft_config["default"].target_parameters == ["mlp.down_proj.weight"]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.down_proj.lora_" in name for name in trainable)


def test_resize_token_embeddings_to_32x_rounds_the_new_size_up(make_config):
    keys = {"tokens": ["<extra_a>", "<extra_b>"], "lora_modules_to_save": ["embed_tokens", "lm_head"]}
    plain, tokenizer = load(make_config("plain", **keys)[0])
    assert plain.get_input_embeddings().num_embeddings == len(tokenizer)
    assert len(tokenizer) % 32  # the rounding below is visible
    rounded, _ = load(make_config("x32", resize_token_embeddings_to_32x=True, **keys)[0])
    rows = rounded.get_input_embeddings().num_embeddings
    assert rows % 32 == 0 and len(tokenizer) < rows < len(tokenizer) + 32
    assert rounded.get_output_embeddings().out_features == rows
    # Without added tokens too: a vocabulary that is not a multiple of 32 is rounded up.
    base, tokenizer = load(make_config("base")[0])
    grown, _ = load(make_config("x32-base", resize_token_embeddings_to_32x=True)[0])
    assert base.get_input_embeddings().num_embeddings == len(tokenizer) and len(tokenizer) % 32
    assert grown.get_input_embeddings().num_embeddings == -(-len(tokenizer) // 32) * 32


def test_activation_offloading_moves_saved_tensors_through_save_on_cpu(make_config, monkeypatch):
    packed = []

    class Spy(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=pin_memory)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: packed.append(tensor.shape) or pack(tensor)

    monkeypatch.setattr(model_options.torch.autograd.graph, "save_on_cpu", Spy)
    grads = []
    for offload in (False, True):
        torch.manual_seed(0)
        cfg, _ = make_config(f"offload{offload}", gradient_checkpointing="offload" if offload else True)
        assert cfg.activation_offloading is offload and cfg.gradient_checkpointing is True
        model, _ = load(cfg)
        model.train()
        with model_options.activation_offloading(cfg):
            backward(model)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert bool(packed) is offload  # the saved tensors went through the CPU hooks
    for name, grad in grads[0].items():  # offloading changes memory, not the result
        torch.testing.assert_close(grads[1][name], grad)


def test_model_config_sets_attributes_of_the_model_config(make_config):
    model, _ = load(make_config(model_config={"attention_dropout": 0.25})[0])
    assert model.get_base_model().config.attention_dropout == 0.25
    # Llama has no router: transformers would drop the key silently, kubetune refuses it.
    with pytest.raises(UserError, match="sets output_router_logits, which LlamaConfig does not have"):
        load(make_config("dense", model_config={"output_router_logits": True})[0])


def test_output_router_logits_adds_the_router_balancing_loss():
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    config = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_aux_loss_coef=0.02,
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(12).expand(2, 12)
    targets = shift_targets(ids, positions)
    plain = CausalLMLoss(model)(input_ids=ids, targets=targets, position_ids=positions)
    model.config.output_router_logits = True
    with_router = CausalLMLoss(model)(input_ids=ids, targets=targets, position_ids=positions)
    router_logits = model.model(
        input_ids=ids, position_ids=positions, output_router_logits=True
    ).router_logits
    balance = load_balancing_loss_func(router_logits, 4, 2, None)
    trained = int((targets != -100).sum())
    torch.testing.assert_close(with_router - plain, 0.02 * balance * trained)
    with_router.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", [None, "LlamaForCausalLM"])
def test_reinit_weights_builds_the_architecture_with_new_weights_from_the_seed(make_config, model_type):
    from accelerate.utils import set_seed

    cfg, _ = make_config(model_type=model_type, **FULL)
    pretrained, _ = load(cfg)
    cfg, _ = make_config(model_type=model_type, reinit_weights=True, **FULL)
    set_seed(cfg.seed)
    fresh, _ = load(cfg)
    set_seed(cfg.seed)
    again, _ = load(cfg)
    assert type(fresh) is type(pretrained) and fresh.config.hidden_size == pretrained.config.hidden_size
    weights = dict(pretrained.named_parameters())
    for name, param in fresh.named_parameters():
        assert param.shape == weights[name].shape and param.requires_grad, name
        if param.dim() == 2:  # linear and embedding weights are drawn anew; norms start at ones again
            assert not torch.equal(param, weights[name]), name
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters(), strict=True))


def _mxfp4_checkpoint(directory, vocab_size: int) -> dict[str, torch.Tensor]:
    """A tiny gpt-oss checkpoint laid out as openai/gpt-oss-20b is: the experts' weights as MXFP4 `_blocks`
    (two 4-bit values a byte) and `_scales` (a power of two per 32 values), quant_method mxfp4 in its
    config. Returns the packed tensors."""
    import json

    import safetensors.torch
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    GptOssForCausalLM(config).save_pretrained(directory)
    weights = safetensors.torch.load_file(directory / "model.safetensors")
    generator, packed = torch.Generator().manual_seed(1), {}
    for name in [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, rows, columns = weights.pop(name).shape
        packed[f"{name}_blocks"] = torch.randint(0, 256, (experts, columns, rows // 32, 16), generator=generator, dtype=torch.uint8)  # fmt: skip
        packed[f"{name}_scales"] = torch.randint(124, 130, (experts, columns, rows // 32), generator=generator, dtype=torch.uint8)  # fmt: skip
    safetensors.torch.save_file(weights | packed, directory / "model.safetensors", metadata={"format": "pt"})
    meta = json.loads((directory / "config.json").read_text())
    meta["quantization_config"] = {"quant_method": "mxfp4"}
    (directory / "config.json").write_text(json.dumps(meta))
    return packed


def test_mxfp4_dequantize_loads_the_experts_as_trainable_plain_weights(make_config, tmp_path, monkeypatch):
    """model_quantization_config: Mxfp4Config + dequantize: true -> transformers' Mxfp4Config(dequantize=True)
    at load: the experts are the MXFP4 values unpacked, plain tensors that train in a full fine-tune (on a GPU
    with the MXFP4 kernels transformers would otherwise keep them packed and untrainable: GPU-untested)."""
    import transformers
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    cfg, _ = make_config(**FULL)
    tokenizer = load_tokenizer(cfg)
    packed = _mxfp4_checkpoint(tmp_path / "gpt-oss", len(tokenizer))
    cfg, _ = make_config(
        base_model=str(tmp_path / "gpt-oss"),
        tokenizer_config=cfg.base_model,
        model_quantization_config="Mxfp4Config",
        model_quantization_config_kwargs={"dequantize": True},
        model_type=None,  # the seed's LlamaForCausalLM
        **FULL,
    )
    seen = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model = load_model(
        cfg, tokenizer, precision=FP32, backend=AttentionBackend("eager", "eager"), device=None
    )
    assert isinstance(seen["quantization_config"], transformers.Mxfp4Config)
    assert seen["quantization_config"].dequantize is True
    experts = model.model.layers[1].mlp.experts
    name = "model.layers.1.mlp.experts.gate_up_proj"
    unpacked = convert_moe_packed_tensors(packed[f"{name}_blocks"], packed[f"{name}_scales"])
    torch.testing.assert_close(experts.gate_up_proj.detach().float(), unpacked.float())
    assert experts.gate_up_proj.requires_grad and getattr(model.config, "quantization_config", None) is None
    assert experts.gate_up_proj.dtype == torch.float32  # the run's dtype (transformers unpacks to bf16)
    backward(model)
    assert experts.down_proj.grad is not None and experts.down_proj.grad.abs().sum() > 0


def _llama4(directory, vocab_size: int):
    """A tiny Llama 4 text model saved twice: as transformers lays it out, and linearized (each expert's
    gate / up / down projection a linear layer's weight, as Axolotl's linearized checkpoints store it)."""
    import safetensors.torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, intermediate_size_mlp=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=3,
        num_experts_per_tok=1, interleave_moe_layer_step=1, no_rope_layers=[1, 1], attention_chunk_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Llama4ForCausalLM(config)
    model.save_pretrained(directory / "fused")
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name in [n for n in weights if n.endswith("experts.gate_up_proj")]:
        prefix, gate_up = name.removesuffix("gate_up_proj"), weights.pop(name)
        down, size = weights.pop(prefix + "down_proj"), gate_up.shape[-1] // 2
        for i in range(gate_up.shape[0]):
            weights[f"{prefix}gate_projs.{i}.weight"] = gate_up[i, :, :size].T.contiguous()
            weights[f"{prefix}up_projs.{i}.weight"] = gate_up[i, :, size:].T.contiguous()
            weights[f"{prefix}down_projs.{i}.weight"] = down[i].T.contiguous()
    model.save_pretrained(directory / "linearized")
    safetensors.torch.save_file(
        weights, directory / "linearized" / "model.safetensors", metadata={"format": "pt"}
    )
    return model.eval()


def test_llama4_linearized_experts_load_a_linearized_checkpoint_into_per_expert_linear_layers(
    make_config, tmp_path
):
    """The linearized checkpoint's per-expert weights load into linear layers (LoRA can target them) and the
    model computes exactly what the fused original does; without the key they would be missing."""
    from kubetune.train.llama4_experts import LinearizedExperts
    from peft.tuners.lora import LoraLayer

    cfg, _ = make_config(**FULL)
    tokenizer = load_tokenizer(cfg)
    fused = _llama4(tmp_path, len(tokenizer))
    keys = {
        "tokenizer_config": cfg.base_model,
        "model_type": None,
        "lora_target_modules": ["experts.gate_projs.0"],
    }
    cfg, _ = make_config(base_model=str(tmp_path / "linearized"), llama4_linearized_experts=True, **keys)
    model, _ = load(cfg)
    experts = model.get_base_model().model.layers[0].feed_forward.experts
    assert isinstance(experts, LinearizedExperts) and isinstance(experts.gate_projs[0], LoraLayer)
    ids = torch.randint(3, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fused(input_ids=ids).logits)
    backward(model)
    assert experts.gate_projs[0].lora_B["default"].weight.grad.abs().sum() > 0
    # A model without Llama 4 experts is refused rather than loaded unchanged.
    cfg, _ = make_config(llama4_linearized_experts=True, **FULL)
    with pytest.raises(UserError, match="has no Llama 4"):
        load(cfg)


def test_lisa_trains_the_drawn_layers_and_redraws_them_every_interval(make_config):
    """A full fine-tune with lisa_n_layers: 1 of the tiny model's layers trains at a time (plus the layers
    outside the decoder list), the draw changes every lisa_step_interval steps, and it comes from the
    seed and the step's block only (a resumed run draws the same)."""
    from kubetune.train.lisa import Lisa
    from kubetune.train.loop import StopFlag, setup, train_loop

    keys = {**FULL, "lisa_n_layers": 1, "lisa_step_interval": 3, "max_steps": 9, "learning_rate": 0.01}
    cfg, _ = make_config(**keys)
    stop = StopFlag()
    run = setup(cfg, stop)
    model = run.accelerator.unwrap_model(run.module).model
    layers = model.model.layers
    before = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
    head = model.lm_head.weight.detach().clone()
    changed_per_block = []
    original_step = Lisa.step_begins

    def spy(self, step):
        if step % 3 == 0 and step:  # a block ended: which layers moved during it
            changed_per_block.append(
                [
                    i
                    for i, layer in enumerate(layers)
                    if any(not torch.equal(p, b) for p, b in zip(layer.parameters(), before[i], strict=True))
                ]
            )
            before[:] = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
        original_step(self, step)

    Lisa.step_begins = spy
    try:
        assert train_loop(run, stop) == "completed"
    finally:
        Lisa.step_begins = original_step
    run.reporters.close()
    draws = [Lisa(layers, 1, 3, cfg.seed) for _ in range(3)]
    for block, draw in enumerate(draws):
        draw.step_begins(3 * block)
    assert changed_per_block == [draws[0].active, draws[1].active]  # blocks 0 and 1; one layer each
    assert len({tuple(d.active) for d in draws}) > 1 or len(layers) == 1
    assert not torch.equal(model.lm_head.weight, head)  # outside the layer list: trained throughout
    # A draw depends on the seed and the block only.
    again = Lisa(layers, 1, 3, cfg.seed)
    again.step_begins(7)
    assert again.active == draws[2].active


def test_bnb_config_kwargs_are_read_as_the_bnb_4bit_keys():
    """Axolotl's bnb_config_kwargs: the BitsAndBytesConfig arguments kubetune has as keys reach the
    quantization config as those keys do; the others, and a disagreement with the key, are refused."""
    from kubetune.config import load_config, validate_mapping
    from kubetune.train.model import quantization_config

    base = {
        "base_model": "m", "learning_rate": 1e-4, "num_epochs": 1, "datasets": [{"path": "d", "type": "alpaca"}],
        "adapter": "qlora", "load_in_4bit": True, "lora_target_linear": True,
    }  # fmt: skip
    for double_quant in (False, True):
        mapping = {
            **base,
            "bnb_config_kwargs": {"bnb_4bit_use_double_quant": double_quant, "bnb_4bit_quant_type": "fp4"},
        }
        assert validate_mapping(mapping) == []
        cfg = load_config(mapping)
        bnb = quantization_config(cfg, Precision(torch.bfloat16, "bf16"))
        assert bnb.bnb_4bit_use_double_quant is double_quant and bnb.bnb_4bit_quant_type == "fp4"
    (problem,) = validate_mapping({**base, "bnb_config_kwargs": {"llm_int8_threshold": 5.0}})
    assert problem.path == "bnb_config_kwargs.llm_int8_threshold"
    clash = {**base, "bnb_4bit_quant_type": "nf4", "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4"}}
    (problem,) = validate_mapping(clash)
    assert problem.path == "bnb_config_kwargs.bnb_4bit_quant_type"
