"""Checkpoint bookkeeping: only whole checkpoints are used, the rest are skipped loudly."""

import hashlib
import json
import logging
import os

import pytest
from kubetune.train import checkpoint
from kubetune.train.errors import UserError


def fake_checkpoint(output_dir, step, *, complete=True, payload=b"x" * 100, hashed=True):
    """A checkpoint directory; `hashed=False` writes the manifest of older versions (sizes only)."""
    path = output_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "optimizer.bin").write_bytes(payload)
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    if complete:
        files = {}
        for name in ("optimizer.bin", "trainer_state.json"):
            data = (path / name).read_bytes()
            files[name] = (
                {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} if hashed else len(data)
            )
        (path / "COMPLETE").write_text(json.dumps({"step": step, "files": files}))
    return path


def flip_one_byte(file, offset=50):
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


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


def test_a_flipped_byte_makes_the_newest_checkpoint_unusable_and_the_previous_one_is_used(tmp_path, caplog):
    fake_checkpoint(tmp_path, 5)
    newest = fake_checkpoint(tmp_path, 10)
    flip_one_byte(newest / "optimizer.bin")
    assert checkpoint.problem(newest).startswith("optimizer.bin is corrupt (sha256 ")
    assert checkpoint.problem(newest, verify_hashes=False) is None  # same size: only the hash tells
    with caplog.at_level(logging.WARNING):
        assert checkpoint.find_resumable(tmp_path).name == "checkpoint-5"
    assert "checkpoint-10 (step 10): optimizer.bin is corrupt" in caplog.text


def test_manifests_without_sha256_are_still_used_and_checked_by_size(tmp_path):
    old = fake_checkpoint(tmp_path, 3, hashed=False)
    flip_one_byte(old / "optimizer.bin")  # undetectable without a hash: the size still matches
    assert checkpoint.problem(old) is None
    assert checkpoint.find_resumable(tmp_path) == old
    (old / "optimizer.bin").write_bytes(b"x")
    assert checkpoint.problem(old) == "optimizer.bin is truncated (1 of 100 bytes)"


class OneProcess:
    """The part of accelerate's Accelerator that checkpoint.save uses, on one process."""

    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self):
        pass

    def save_state(self, directory):
        os.makedirs(f"{directory}/shard", exist_ok=True)
        with open(f"{directory}/model.safetensors", "wb") as handle:
            handle.write(os.urandom(3000))
        with open(f"{directory}/shard/optimizer.bin", "wb") as handle:
            handle.write(os.urandom(5000))


def test_save_records_size_and_sha256_of_every_file_and_fsyncs_them_before_publishing(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    published = []

    def replace(src, dst):
        if os.path.basename(str(dst)).startswith("checkpoint-"):
            published.append(list(synced))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = checkpoint.save(OneProcess(), checkpoint.TrainerState(step=7), tmp_path, total_limit=None)
    manifest = json.loads((path / "COMPLETE").read_text())["files"]
    assert set(manifest) == {"model.safetensors", "shard/optimizer.bin", "trainer_state.json"}
    for name, entry in manifest.items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    temp = str(tmp_path / "checkpoints" / ".tmp-checkpoint-7")
    before_rename = published[0]
    for name in (
        "model.safetensors",
        "shard/optimizer.bin",
        "trainer_state.json",
        ".COMPLETE.tmp",
        "shard",
        "",
    ):
        assert os.path.normpath(f"{temp}/{name}") in before_rename, name
    assert checkpoint.problem(path) is None


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
