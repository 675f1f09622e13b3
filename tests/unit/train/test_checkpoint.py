"""Checkpoint bookkeeping: only whole checkpoints are used, the rest are skipped loudly."""

import json
import logging

import pytest
from kubetune.train import checkpoint
from kubetune.train.errors import UserError


def fake_checkpoint(output_dir, step, *, complete=True, payload=b"x" * 100):
    path = output_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "optimizer.bin").write_bytes(payload)
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    if complete:
        files = {name: (path / name).stat().st_size for name in ("optimizer.bin", "trainer_state.json")}
        (path / "COMPLETE").write_text(json.dumps({"step": step, "files": files}))
    return path


def test_problems_are_named(tmp_path):
    whole = fake_checkpoint(tmp_path, 10)
    assert checkpoint.problem(whole) is None
    unmarked = fake_checkpoint(tmp_path, 20, complete=False)
    assert "no COMPLETE marker" in checkpoint.problem(unmarked)
    truncated = fake_checkpoint(tmp_path, 30)
    (truncated / "optimizer.bin").write_bytes(b"x" * 10)
    assert "optimizer.bin is truncated (10 of 100 bytes)" == checkpoint.problem(truncated)
    (truncated / "optimizer.bin").unlink()
    assert "optimizer.bin is missing" == checkpoint.problem(truncated)


def test_newest_whole_checkpoint_wins_and_broken_newer_ones_are_skipped_with_a_warning(tmp_path, caplog):
    fake_checkpoint(tmp_path, 5)
    fake_checkpoint(tmp_path, 10)
    truncated = fake_checkpoint(tmp_path, 15)
    (truncated / "optimizer.bin").write_bytes(b"x")
    fake_checkpoint(tmp_path, 20, complete=False)
    (tmp_path / "checkpoints" / "checkpoint-notanumber").mkdir()
    with caplog.at_level(logging.WARNING):
        found = checkpoint.find_resumable(tmp_path)
    assert found.name == "checkpoint-10"
    assert "checkpoint-20 (step 20): no COMPLETE marker" in caplog.text
    assert "checkpoint-15 (step 15): optimizer.bin is truncated" in caplog.text
    assert checkpoint.find_resumable(tmp_path / "elsewhere") is None


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 3, complete=False)
    fake_checkpoint(tmp_path, 10, complete=False)
    checkpoint.prune(tmp_path, 2)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [6, 8, 10]


def test_interrupted_writes_are_removed(tmp_path):
    temp = tmp_path / "checkpoints" / ".tmp-checkpoint-7"
    temp.mkdir(parents=True)
    checkpoint.remove_partial(tmp_path)
    assert not temp.exists()


def test_an_explicit_unusable_checkpoint_is_bad_input(tmp_path):
    class Cfg:
        def resolve_path(self, value):
            return tmp_path / value

    fake_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(UserError) as err:
        checkpoint.explicit_checkpoint(Cfg(), "checkpoints/checkpoint-4")
    assert "no COMPLETE marker" in err.value.problem
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.explicit_checkpoint(Cfg(), "checkpoints/checkpoint-9")


def test_trainer_state_round_trips_and_ignores_unknown_keys():
    state = checkpoint.TrainerState(step=3, epoch=1, step_in_epoch=2, history=[{"step": 1}])
    data = json.loads(json.dumps(state.__dict__)) | {"from_a_newer_version": 1}
    assert checkpoint.TrainerState.from_dict(data) == state


def test_materialized_optimizer_state_has_the_moments_and_leaves_the_weights_alone():
    """A fresh optimizer gets Adam's moments (so an FSDP1 sharded checkpoint has somewhere to load them
    into), while the weights, the gradients and the learning rate stay as they were."""
    import torch
    from kubetune.train.checkpoint import materialize_optimizer_state

    model = torch.nn.Linear(4, 3)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    optimizer = torch.optim.AdamW([*model.parameters(), frozen], lr=0.1, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    materialize_optimizer_state(optimizer)
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(optimizer.state[model.weight])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters()) and frozen not in optimizer.state
    assert optimizer.param_groups[0]["lr"] == 0.1
