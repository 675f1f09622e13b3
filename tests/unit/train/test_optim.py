"""Optimizers and the learning-rate schedule."""

import math

import pytest
import torch
from kubetune.train.errors import UserError
from kubetune.train.optim import (
    MuonWithAdamW,
    after_evaluation,
    build_optimizer,
    build_scheduler,
    check_request,
    cosine_multiplier,
    parameter_groups,
    warmup_steps,
)
from torch import nn


class Cfg:
    optimizer = "adamw_torch"
    learning_rate = 0.1
    weight_decay = 0.01
    adam_beta1, adam_beta2, adam_epsilon = 0.9, 0.95, 1e-6
    lr_scheduler = "cosine"
    lr_scheduler_kwargs = None
    warmup_steps = None
    warmup_ratio = None
    cosine_min_lr_ratio = None
    cosine_constant_lr_ratio = None
    eta_min = None
    lr_quadratic_warmup = False

    def __init__(self, **keys):
        self.__dict__.update(keys)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.input_layernorm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_biases_and_norms_are_not_decayed_and_frozen_weights_not_optimised():
    decay, no_decay = parameter_groups(Block(), 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias, norm weight, norm bias


@pytest.mark.parametrize(
    ("name", "cls", "fused"),
    [
        ("adamw_torch", torch.optim.AdamW, False),
        ("adamw_torch_fused", torch.optim.AdamW, True),
        ("sgd", torch.optim.SGD, None),
    ],
)
def test_torch_optimizers(name, cls, fused):
    optimizer = build_optimizer(Cfg(optimizer=name), Block())
    assert type(optimizer) is cls
    if fused is not None:
        assert bool(optimizer.defaults["fused"]) is fused
        assert optimizer.defaults["betas"] == (0.9, 0.95)


def _one_step_changes_the_weights(optimizer, model: nn.Module) -> None:
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model(torch.randn(8, model[0].in_features)).square().sum().backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), f"{name} did not move"


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))  # 8192-element weights: quantised


@pytest.mark.parametrize(
    ("name", "cls", "state_type"),
    [
        ("adamw_torch_8bit", "AdamW8bit", "OptimState8bit"),
        ("adamw_torch_4bit", "AdamW4bit", "OptimState4bit"),
    ],
)
def test_torchao_low_bit_adamw_is_built_and_steps(name, cls, state_type):
    torchao_optim = pytest.importorskip("torchao.optim")
    model = _mlp()
    optimizer = build_optimizer(Cfg(optimizer=name, learning_rate=1e-2), model)
    assert type(optimizer) is getattr(torchao_optim, cls)
    assert optimizer.param_groups[0]["eps"] == 1e-6 and optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    _one_step_changes_the_weights(optimizer, model)
    # the states of the weight matrices are torchao's quantised tensor subclasses
    assert type(optimizer.state[model[0].weight]["exp_avg"]).__name__ == state_type


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw_8bit", "AdamW8bit"),
        ("adamw_bnb_8bit", "AdamW8bit"),
        ("paged_adamw_8bit", "PagedAdamW8bit"),
        ("paged_adamw_32bit", "PagedAdamW32bit"),
    ],
)
def test_bitsandbytes_optimizers_are_built_and_step(name, cls):
    bnb = pytest.importorskip("bitsandbytes")  # the gpu extra; bitsandbytes >= 0.48 also steps on CPU
    model = _mlp()
    optimizer = build_optimizer(Cfg(optimizer=name, learning_rate=1e-2), model)
    assert type(optimizer) is getattr(bnb.optim, cls)
    _one_step_changes_the_weights(optimizer, model)


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("adamw_bnb_8bit", "AdamW8bit"),
        ("adamw_8bit", "AdamW8bit"),
        ("paged_adamw_8bit", "AdamW8bit"),
        ("paged_adamw_32bit", "AdamW"),
    ],
)
def test_under_fsdp2_bitsandbytes_names_are_served_by_optimizers_whose_states_shard(name, served, caplog):
    """bitsandbytes' states cannot hold FSDP2's DTensor shards: torchao's 8-bit AdamW (or torch's AdamW for
    the 32-bit paged one) serves the name, on CPU too (no CUDA check), and the log says which."""
    pytest.importorskip("torchao.optim")
    check_request(Cfg(optimizer=name), cuda=False, fsdp2=True)  # bitsandbytes itself would need CUDA
    with pytest.raises(UserError, match="CUDA"):
        check_request(Cfg(optimizer=name), cuda=False)
    model = _mlp()
    with caplog.at_level("INFO", logger="kubetune.train.optim"):
        optimizer = build_optimizer(Cfg(optimizer=name, learning_rate=1e-2), model, fsdp2=True)
    assert type(optimizer).__name__ == served and type(optimizer).__module__.split(".")[0] in (
        "torchao",
        "torch",
    )
    assert f"optimizer {name} under FSDP2: served by" in caplog.text
    _one_step_changes_the_weights(optimizer, model)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(32, 16)
            self.layer = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 32, bias=False)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

        def forward(self, ids):
            return self.head(self.norm(self.layer(self.embed(ids))))

    torch.manual_seed(0)
    model = TinyLM()
    optimizer = build_optimizer(Cfg(optimizer="muon", learning_rate=1e-2), model)
    assert type(optimizer) is MuonWithAdamW
    assert type(optimizer.muon) is torch.optim.Muon and type(optimizer.adamw) is torch.optim.AdamW
    muon_params = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    assert muon_params == {id(model.layer.weight)}  # embeddings, head, norm and bias go to AdamW
    adam_params = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    assert {id(model.embed.weight), id(model.head.weight), id(model.layer.bias)} <= adam_params
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 32, (4, 8))).logsumexp(-1).sum().backward()
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert optimizer.state[model.layer.weight]["momentum_buffer"].shape == (16, 16)  # Muon's state

    # one state_dict for both; after loading, the schedule's LR changes still reach both optimizers
    fresh = build_optimizer(Cfg(optimizer="muon", learning_rate=1e-2), model)
    fresh.load_state_dict(optimizer.state_dict())
    for group in fresh.param_groups:
        group["lr"] = 0.5
    assert fresh.muon.param_groups[0]["lr"] == 0.5 and fresh.adamw.param_groups[0]["lr"] == 0.5
    assert torch.equal(
        fresh.muon.state[model.layer.weight]["momentum_buffer"],
        optimizer.state[model.layer.weight]["momentum_buffer"],
    )


def test_bitsandbytes_optimizers_are_refused_without_cuda():
    with pytest.raises(UserError) as err:
        check_request(Cfg(optimizer="paged_adamw_32bit"), cuda=False)
    assert "adamw_torch_fused" in err.value.fix


# -- schedules: the LR (peak 1.0) at the start of each optimizer step ---------------------------------


def lrs(steps: int = 11, total: int = 10, **keys) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(Cfg(learning_rate=1.0, **keys), optimizer, total_steps=total)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_constant_does_not_warm_up_and_constant_with_warmup_does():
    assert lrs(lr_scheduler="constant") == [1.0] * 11
    assert lrs(lr_scheduler="constant_with_warmup", warmup_steps=2)[:4] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_linear_and_cosine_as_transformers_define_them():
    linear = lrs(lr_scheduler="linear", warmup_steps=2)
    assert linear[:3] == pytest.approx([0.0, 0.5, 1.0]) and linear[6] == pytest.approx(0.5)
    assert linear[10] == pytest.approx(0.0)
    cosine = lrs(lr_scheduler="cosine", warmup_steps=2)
    assert (
        cosine[2] == pytest.approx(1.0) and cosine[6] == pytest.approx(0.5) and cosine[10] == pytest.approx(0)
    )


def test_cosine_with_restarts_polynomial_and_inverse_sqrt():
    restarts = lrs(lr_scheduler="cosine_with_restarts", warmup_steps=2, lr_scheduler_kwargs={"num_cycles": 2})
    assert restarts[4] == pytest.approx(0.5) and restarts[6] == pytest.approx(1.0)  # the second cycle starts
    poly = lrs(lr_scheduler="polynomial", warmup_steps=2, lr_scheduler_kwargs={"power": 2.0, "lr_end": 0.0})
    assert poly[6] == pytest.approx(0.25)  # (1 - 4/8)^2
    inv = lrs(lr_scheduler="inverse_sqrt", warmup_steps=2)
    assert inv[2] == pytest.approx(1.0) and inv[8] == pytest.approx(0.5)  # 1 / sqrt(step / warmup)


def test_min_lr_schedules_and_warmup_stable_decay():
    with_min = lrs(
        lr_scheduler="cosine_with_min_lr", warmup_steps=2, lr_scheduler_kwargs={"min_lr_rate": 0.1}
    )
    assert with_min[6] == pytest.approx(0.55) and with_min[10] == pytest.approx(0.1)
    warm_min = lrs(
        lr_scheduler="cosine_warmup_with_min_lr", warmup_steps=2, lr_scheduler_kwargs={"min_lr": 0.2}
    )
    # transformers' variant warms up to the peak one step earlier and reaches the floor at the last step
    assert warm_min[:2] == pytest.approx([0.5, 1.0]) and warm_min[9] == pytest.approx(0.2)
    wsd = lrs(lr_scheduler="warmup_stable_decay", warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": 4})
    assert (
        wsd[2:7] == pytest.approx([1.0] * 5) and wsd[8] == pytest.approx(0.5) and wsd[10] == pytest.approx(0)
    )


def test_axolotl_cosine_floor_constant_tail_and_quadratic_warmup():
    floor = lrs(lr_scheduler="cosine", warmup_steps=2, cosine_min_lr_ratio=0.1)
    assert floor[6] == pytest.approx(0.55) and floor[10] == pytest.approx(0.1)
    assert lrs(lr_scheduler="cosine", warmup_steps=2, eta_min=0.1) == pytest.approx(floor)  # eta_min / lr
    held = lrs(lr_scheduler="cosine", warmup_steps=2, cosine_min_lr_ratio=0.2, cosine_constant_lr_ratio=0.6)
    assert held[4] == pytest.approx(0.6)  # halfway from step 2 to step 6
    assert held[6:] == pytest.approx([0.2] * 5)  # the floor from 60% of the steps on
    quad = lrs(lr_scheduler="cosine", warmup_steps=4, lr_quadratic_warmup=True)
    assert quad[:5] == pytest.approx([0.0, 1 / 16, 0.25, 9 / 16, 1.0])
    assert cosine_multiplier(7, warmup=4, total=10, quadratic=True) == pytest.approx(0.5)


def test_eval_driven_schedules_move_only_with_the_eval_loss():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = Cfg(learning_rate=1.0, lr_scheduler="reduce_lr_on_plateau", lr_scheduler_kwargs={"patience": 0})
    scheduler = build_scheduler(cfg, optimizer, total_steps=10)
    for _ in range(5):
        scheduler.step()  # the loop's per-step call
    assert optimizer.param_groups[0]["lr"] == 1.0
    after_evaluation(scheduler, 2.0)
    after_evaluation(scheduler, 2.0)  # no improvement: halved (patience 0, factor 0.1 default)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    greedy = build_scheduler(
        Cfg(learning_rate=1.0, lr_scheduler="greedy", lr_scheduler_kwargs={"patience": 0, "factor": 0.5}),
        optimizer,
        total_steps=10,
    )
    seen = []
    for loss in (3.0, 3.0, 2.0):  # GreedyLR raises the LR on an improvement and lowers it otherwise
        after_evaluation(greedy, loss)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.2, 0.1, 0.2])


def test_fractional_warmup_steps_are_a_share_of_the_total():
    assert warmup_steps(Cfg(warmup_steps=0.1), 95) == 10  # rounded up, as transformers does
    assert warmup_steps(Cfg(warmup_steps=5), 95) == 5
    assert warmup_steps(Cfg(warmup_ratio=0.25), 8) == 2
    assert lrs(lr_scheduler="linear", warmup_steps=0.2)[:3] == pytest.approx([0.0, 0.5, 1.0])


def test_scheduler_uses_warmup_ratio_and_restores_from_its_state():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(Cfg(), model)
    scheduler = build_scheduler(Cfg(warmup_ratio=0.25), optimizer, total_steps=8)  # 2 warmup steps
    assert optimizer.param_groups[0]["lr"] == 0.0
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_optimizer(Cfg(), model)
    fresh = build_scheduler(Cfg(warmup_ratio=0.25), fresh_optimizer, total_steps=8)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert math.isclose(scheduler.get_last_lr()[0], 0.1 * 0.5 * (1 + math.cos(math.pi / 6)))
