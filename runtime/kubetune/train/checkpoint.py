"""Checkpoints: written atomically, verified before use, pruned, found again on restart.

Layout: <output_dir>/checkpoints/checkpoint-<step>/ holds accelerate's state (model or adapter
weights, optimizer, scheduler, RNG of every rank), `trainer_state.json` (step, epoch, data position,
counters) and `COMPLETE`, a manifest of every file's size and sha256, written last. With
`save_only_model` the optimizer and scheduler state are left out (the manifest says `model_only`); a
run resumed from such a checkpoint continues at its step with a fresh optimizer (see `load`). All of it is
first written to `.tmp-checkpoint-<step>`, fsynced, and renamed into place, so a reader sees a whole
checkpoint or none; a directory whose files do not match its manifest (missing, truncated, a flipped
byte) is skipped. Manifests written before hashes were recorded (`{name: size}`) are checked by size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kubetune.train.errors import UserError
from kubetune.train.sharded_state import ShardedTrainableState

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS = "model.safetensors"  # accelerate's file name for model 0 (only trainable weights kept)
_NAME = re.compile(r"^checkpoint-(\d+)$")
_HASH_THREADS = 8  # hashlib releases the GIL: files of a checkpoint are hashed side by side


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch: the data position
    trained_tokens: int = 0  # label tokens trained on, all ranks
    input_tokens: int = 0  # non-pad tokens processed, all ranks
    train_seconds: float = 0.0  # wall time spent in the training loop, summed over restarts
    last_loss: float | None = None
    best_loss: float | None = None
    last_eval_loss: float | None = None
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    resumed_from_step: int | None = None
    history: list = field(default_factory=list)  # logged {step, loss, lr}, for the summary and tests

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def checkpoints_root(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-<step> directory, oldest first (complete or not)."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), path) for path in root.iterdir() if (m := _NAME.match(path.name)) and path.is_dir()
    ]
    return sorted(found)


def problem(path: Path, *, verify_hashes: bool = True) -> str | None:
    """Why this checkpoint cannot be used, or None when it is complete and whole.

    Every file of the manifest must be there with its size and (unless `verify_hashes` is off, or the
    manifest predates hashes) its sha256."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (the write was interrupted)"
    try:
        manifest = {name: _entry(value) for name, value in json.loads(marker.read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable {MARKER} manifest ({err})"
    for name, (size, _) in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is truncated ({file.stat().st_size} of {size} bytes)"
    if not verify_hashes:
        return None
    hashed = {name: sha256 for name, (_, sha256) in manifest.items() if sha256 is not None}
    for (name, expected), actual in zip(
        hashed.items(), _digests(path, list(hashed), fsync=False), strict=True
    ):
        if actual != expected:
            return f"{name} is corrupt (sha256 {actual[:12]}…, the manifest says {expected[:12]}…)"
    return None


def _entry(value) -> tuple[int, str | None]:
    """(size, sha256) of a manifest entry; manifests before sha256 hold the size alone."""
    if isinstance(value, int):
        return value, None
    return int(value["size"]), str(value["sha256"])


def _digests(root: Path, names: list[str], *, fsync: bool) -> list[str]:
    """sha256 of each file (read once, several at a time); `fsync` also flushes each to disk."""

    def one(name: str) -> str:
        with open(root / name, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
            if fsync:
                os.fsync(handle.fileno())
        return sha256

    if len(names) <= 1:
        return [one(name) for name in names]
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(names))) as pool:
        return list(pool.map(one, names))


def find_resumable(output_dir: Path, accelerator=None) -> Path | None:
    """The newest usable checkpoint; newer unusable ones are skipped with a warning.

    With an accelerator of several processes the main process decides (hashing each file once, not
    once per rank) and every rank gets its answer, so all ranks resume from the same checkpoint."""
    found = _on_main_process(accelerator, lambda: _newest_whole(output_dir))
    return Path(found) if found else None


def _newest_whole(output_dir: Path) -> str | None:
    for step, path in reversed(list_checkpoints(output_dir)):
        reason = problem(path)
        if reason is None:
            return str(path)
        log.warning("skipping checkpoint %s (step %d): %s", path, step, reason)
    return None


def _on_main_process(accelerator, decide):
    """decide() on the main process only, its (picklable) result broadcast to every rank."""
    if accelerator is None or accelerator.num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    answer = [decide() if accelerator.is_main_process else None]
    broadcast_object_list(answer, from_process=0)
    return answer[0]


def explicit_checkpoint(cfg, value: str, accelerator=None) -> Path:
    path = cfg.resolve_path(value)
    reason = _on_main_process(
        accelerator, lambda: problem(path) if path.is_dir() else "the directory does not exist"
    )
    if reason:
        raise UserError(
            f"resume_from_checkpoint {path} cannot be used: {reason}.",
            "Point it at a complete checkpoint (one with a COMPLETE file), or remove the key to resume from "
            "the newest complete checkpoint in output_dir automatically.",
            key="resume_from_checkpoint",
        )
    return path


def remove_partial(output_dir: Path) -> None:
    """Delete temp directories of checkpoint writes that a kill interrupted (main process only)."""
    root = checkpoints_root(output_dir)
    if root.is_dir():
        for path in root.glob(".tmp-*"):
            log.warning("removing the interrupted checkpoint write %s", path)
            shutil.rmtree(path, ignore_errors=True)


def register_adapter_hooks(accelerator, module) -> None:
    """Checkpoint only the trainable weights (the adapter) instead of the whole frozen base model.

    accelerate calls the save hook with the full state dicts it is about to write, and the load hook
    before it loads them; both apply to plain DDP / single-device runs (FSDP and DeepSpeed checkpoint
    through their own formats).
    """
    from safetensors.torch import load_file

    def trainable(model) -> set[str]:
        return {name for name, param in model.named_parameters() if param.requires_grad}

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models[: len(weights)]):
            keep = trainable(model)
            weights[i] = {name: tensor for name, tensor in weights[i].items() if name in keep}

    def load_hook(models, input_dir):
        for model in models:
            state = load_file(os.path.join(input_dir, ADAPTER_WEIGHTS), device="cpu")
            expected = trainable(model)
            if set(state) != expected:
                missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
                raise RuntimeError(
                    f"checkpoint {input_dir} does not match the trainable weights of this run "
                    f"(missing {missing}, unexpected {extra}); was the adapter configuration changed?"
                )
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here; accelerate must not load them again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save(
    accelerator,
    state: TrainerState,
    output_dir: Path,
    *,
    total_limit: int | None,
    trainable: ShardedTrainableState | None = None,
    model_only: bool = False,
) -> Path:
    """Write checkpoint-<step> atomically (collective: every rank calls it). Returns its path.

    `trainable`: an adapter under FSDP checkpoints its trainable weights only (see ShardedTrainableState);
    everything else goes through accelerate's save_state. `model_only` (save_only_model): without the
    optimizer and scheduler state (the config rules keep it away from `trainable` and DeepSpeed)."""
    root = checkpoints_root(output_dir)
    final = root / f"checkpoint-{state.step}"
    temp = root / f".tmp-checkpoint-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if trainable is not None:
        trainable.save(temp)
    else:
        with _without_training_state(accelerator) if model_only else contextlib.nullcontext():
            accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(temp / STATE_FILE, asdict(state))
        marker = {"step": state.step, "files": _manifest(temp)}
        _write_json(temp / MARKER, marker | {"model_only": True} if model_only else marker)
        for directory in sorted({p.parent for p in temp.rglob("*")} | {temp}, reverse=True):
            _fsync_dir(directory)  # the entries of every (sub)directory, deepest first
        trash = root / f".tmp-replaced-{state.step}"
        if final.exists():  # the same step saved again: keep the old one whole until the new one is in
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
        os.replace(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(root)
        prune(output_dir, total_limit)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def _manifest(directory: Path) -> dict[str, dict]:
    """{relative name: {size, sha256}} of every file, each read back once to hash it and fsynced, so
    the data is on disk before the rename that publishes the checkpoint."""
    names = [str(p.relative_to(directory)) for p in sorted(directory.rglob("*")) if p.is_file()]
    digests = _digests(directory, names, fsync=True)
    return {
        name: {"size": (directory / name).stat().st_size, "sha256": sha256}
        for name, sha256 in zip(names, digests, strict=True)
    }


def load(accelerator, path: Path, *, trainable: ShardedTrainableState | None = None) -> TrainerState:
    """Restore model/adapter, optimizer, scheduler and RNG from `path` (collective); return its state.

    A model-only checkpoint (save_only_model) restores the weights, RNG and trainer state (step, data
    position); the optimizer starts fresh (zero moments, as transformers' Trainer does) and the schedule
    is stepped forward to the checkpoint's step, so the learning rate is the one the run had there."""
    state = TrainerState.from_dict(json.loads((path / STATE_FILE).read_text()))
    if is_model_only(path):
        log.warning(
            "checkpoint %s holds the model without optimizer state (save_only_model): resuming at step %d "
            "with a fresh optimizer (its moments restart from zero)",
            path,
            state.step,
        )
        with _without_training_state(accelerator) as schedules:
            accelerator.load_state(str(path))
        with warnings.catch_warnings():  # torch warns of a scheduler stepped before its optimizer
            warnings.simplefilter("ignore", UserWarning)
            for schedule in schedules:
                for _ in range(state.step):
                    schedule.step()
        return state
    if trainable is not None:
        trainable.load(path)
    else:
        if _sharded_fsdp1_optimizer(accelerator):
            for optimizer in accelerator._optimizers:
                materialize_optimizer_state(optimizer.optimizer)
        accelerator.load_state(str(path))
    return state


def is_model_only(path: Path) -> bool:
    """Whether the (complete) checkpoint was written by save_only_model."""
    return bool(json.loads((path / MARKER).read_text()).get("model_only"))


@contextlib.contextmanager
def _without_training_state(accelerator):
    """accelerate's save_state / load_state with no optimizer or scheduler registered, so they write or
    read the model and RNG only. Yields the schedules set aside (kubetune registers its scheduler as
    accelerate's one custom object, loop.setup)."""
    kept = accelerator._optimizers, accelerator._schedulers, accelerator._custom_objects
    accelerator._optimizers, accelerator._schedulers, accelerator._custom_objects = [], [], []
    try:
        yield list(kept[2])
    finally:
        accelerator._optimizers, accelerator._schedulers, accelerator._custom_objects = kept


def _sharded_fsdp1_optimizer(accelerator) -> bool:
    from torch.distributed.fsdp import StateDictType

    from kubetune.train.distributed import is_fsdp1

    return (
        is_fsdp1(accelerator)
        and accelerator.state.fsdp_plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    )


def materialize_optimizer_state(optimizer) -> None:
    """Create the optimizer's per-parameter state (Adam's moments, step), unchanged weights.

    accelerate loads an FSDP1 SHARDED_STATE_DICT optimizer checkpoint into the shape of the live
    optimizer's state dict (torch.distributed.checkpoint fills what is there); a fresh optimizer has no
    moments yet, so they were silently not loaded and the resumed run left the uninterrupted loss curve
    (tests/unit/train/test_fsdp_cpu.py). One step with zero gradients at learning rate 0 creates them.
    """
    import torch

    if optimizer.state:
        return
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    made_grads = []
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
                made_grads.append(param)
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = lr
    for param in made_grads:
        param.grad = None


def prune(output_dir: Path, total_limit: int | None) -> None:
    """Keep the newest `total_limit` complete checkpoints; everything older goes (complete or not)."""
    if not total_limit:
        return
    checkpoints = list_checkpoints(output_dir)
    # Sizes only: rehashing every kept checkpoint at each save would cost a full read of all of them.
    complete = [step for step, path in checkpoints if problem(path, verify_hashes=False) is None]
    if len(complete) <= total_limit:
        return
    oldest_kept = complete[-total_limit]
    for step, path in checkpoints:
        if step < oldest_kept:
            log.info("deleting old checkpoint %s (save_total_limit=%d)", path, total_limit)
            shutil.rmtree(path, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
