"""What a finished run leaves in output_dir, and the signals that it finished.

    output_dir/
      adapter_config.json + adapter_model.safetensors    (adapter runs; loads with plain peft)
      config.json + model*.safetensors                   (full fine-tunes; loads with transformers)
      tokenizer files, training_summary.json
      checkpoints/checkpoint-<step>/                     (see checkpoint.py)
      KUBETUNE_COMPLETE                                  (written last)

Files are written to a staging directory inside output_dir and renamed into place one by one, so
no file is ever seen half-written; KUBETUNE_COMPLETE is written only after all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = "KUBETUNE_COMPLETE"
SUMMARY = "training_summary.json"
TERMINATION_LOG = "/dev/termination-log"


def is_complete(output_dir: Path) -> bool:
    return (output_dir / COMPLETE_MARKER).is_file()


def save_model(accelerator, module, tokenizer, output_dir: Path, *, trainable=None) -> list[str]:
    """Save the adapter or the full model and the tokenizer (collective: every rank calls it).

    `module` is the prepared CausalLMLoss; the weights are gathered from FSDP / ZeRO-3 shards first.
    `trainable` (an adapter under FSDP): gather only the trainable weights, which is all an adapter
    file holds, instead of the whole model's FSDP state dict (which a 4-bit base cannot produce).
    """
    if trainable is not None:
        state_dict = trainable.gather_trainable()
    else:
        state_dict = full_state_dict(accelerator, module)  # full (gathered) weights on the main process
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return []
    model = accelerator.unwrap_model(module).model
    state_dict = {clean_key(key): value for key, value in state_dict.items()}
    state_dict = {
        key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")
    }
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".staging-"))
    try:
        base_config = getattr(model, "get_base_model", lambda: model)().config
        base_config.use_cache = True  # for whoever loads the result to generate
        if hasattr(model, "peft_config"):
            names_only = (
                trainable.key_names_without_collectives()
                if trainable is not None
                else contextlib.nullcontext()
            )
            with wrapper_free_module_names(model), names_only:
                model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        else:  # transformers writes safetensors shards (5 GB each, with an index beyond one)
            model.save_pretrained(staging, state_dict=state_dict, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        names = publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    return names


def full_state_dict(accelerator, module) -> dict:
    """Every weight of `module`, whole, on the main process (other ranks may get an empty dict).

    FSDP1 is gathered here rather than by accelerate's get_state_dict, whose offload of the gathered
    weights to the CPU crashes when they are on the CPU already (FSDP on CPU processes, see
    distributed.py): offload only from a GPU.
    """
    from kubetune.train.distributed import is_fsdp1

    if not is_fsdp1(accelerator):
        return accelerator.get_state_dict(module)
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=accelerator.device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
        return module.state_dict()


@contextlib.contextmanager
def wrapper_free_module_names(model):
    """peft picks the adapter's tensors out of the state dict by the names of the model's adapter layers;
    FSDP1 inserts `_fsdp_wrapped_module.` in the middle of those names (one per wrapped decoder layer),
    and peft strips it only at the front. The names then match none of the (clean) state dict keys and
    the adapter is saved without its LoRA weights (peft 0.21). peft sees clean names here."""
    original = model.named_modules

    def named_modules(*args, **kwargs):
        for name, module in original(*args, **kwargs):
            yield clean_key(name), module

    model.named_modules = named_modules
    try:
        yield model
    finally:
        del model.named_modules


def clean_key(key: str) -> str:
    """A parameter name without the wrappers' path segments (FSDP, activation checkpointing, compile)."""
    for segment in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        key = key.replace(segment, "")
    return key.removeprefix("module.")  # DDP


def publish(staging: Path, output_dir: Path) -> list[str]:
    """Move every file of `staging` into output_dir (each an atomic rename, same filesystem)."""
    names = []
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            target = output_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            names.append(str(path.relative_to(staging)))
    return names


def write_json(path: Path, data: dict) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def mark_complete(output_dir: Path, summary: dict) -> None:
    """training_summary.json, then KUBETUNE_COMPLETE (the marker a restarted worker looks for)."""
    write_json(output_dir / SUMMARY, summary)
    write_json(
        output_dir / COMPLETE_MARKER,
        {"completed_at": summary.get("completed_at"), "steps": summary.get("steps")},
    )


def completed_summary(output_dir: Path) -> dict:
    """The summary of the run that completed in output_dir, for a restarted worker to report again.

    A StatefulSet restarts a worker that exited after success; its termination message must still
    carry the run's figures, since the operator may read only the latest exit.
    """
    try:
        summary = json.loads((output_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("completed run in %s has no readable %s: %s", output_dir, SUMMARY, err)
        summary = {"status": "completed"}
    return {**summary, "already_complete": True}


def write_termination_log(summary: dict, path: str | None = None) -> None:
    """One line of JSON for `kubectl describe pod`; only where Kubernetes provides the file."""
    path = path or os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG)
    if not os.path.exists(path) or not os.access(path, os.W_OK):
        return
    keys = (
        "status",
        "steps",
        "final_train_loss",
        "final_eval_loss",
        "trained_tokens",
        "output_uri",  # where the result was uploaded: the operator records it in status.outputs
        "exit_code",
        "reason",
    )
    line = json.dumps({key: summary[key] for key in keys if summary.get(key) is not None})
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(line[:4000] + "\n")  # the kubelet keeps at most 4096 bytes
    except OSError as err:
        log.warning("could not write the termination log %s: %s", path, err)
