"""Optimizers and the learning-rate schedule."""

import math

import pytest
import torch
from kubetune.train.errors import UserError
from kubetune.train.optim import (
    build_optimizer,
    build_scheduler,
    check_request,
    lr_multiplier,
    parameter_groups,
)
from torch import nn


class Cfg:
    optimizer = "adamw_torch"
    learning_rate = 0.1
    weight_decay = 0.01
    adam_beta1, adam_beta2, adam_epsilon = 0.9, 0.95, 1e-6
    lr_scheduler = "cosine"
    warmup_steps = None
    warmup_ratio = None
    cosine_min_lr_ratio = None

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


def test_bitsandbytes_optimizers_are_refused_without_cuda():
    with pytest.raises(UserError) as err:
        check_request(Cfg(optimizer="paged_adamw_8bit"), cuda=False)
    assert "adamw_torch_fused" in err.value.fix


def test_warmup_then_cosine_down_to_the_floor():
    values = [lr_multiplier(s, kind="cosine", warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))  # never rises after warmup
    assert values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert lr_multiplier(20, kind="cosine", warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.1)


def test_linear_and_constant():
    assert lr_multiplier(0, kind="linear", warmup=0, total=10, min_ratio=0) == 1.0
    assert lr_multiplier(5, kind="linear", warmup=0, total=10, min_ratio=0) == pytest.approx(0.5)
    assert lr_multiplier(9, kind="constant", warmup=2, total=10, min_ratio=0) == 1.0


def test_scheduler_uses_warmup_ratio_and_restores_from_its_state():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(Cfg(), model)
    scheduler = build_scheduler(Cfg(warmup_ratio=0.25), optimizer, total_steps=8)  # 2 warmup steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_optimizer(Cfg(), model)
    fresh = build_scheduler(Cfg(warmup_ratio=0.25), fresh_optimizer, total_steps=8)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
