"""The training run, in one readable flow: setup → train → save.

    summary = train(cfg)

setup:  refuse bad input (before output_dir is touched) → tokenizer → accelerator → data → model →
        optimizer and schedule → resume from the newest complete checkpoint
train:  per optimizer step, gradient_accumulation_steps micro-batches; the loss is a token SUM
        divided by the trained tokens of the whole step on all ranks; clip, step, log, evaluate,
        checkpoint; SIGTERM → checkpoint at the next step boundary → exit 143
save:   adapter or model + tokenizer, training_summary.json, KUBETUNE_COMPLETE
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from kubetune import __version__
from kubetune.train import attention, checkpoint, distributed, export, optim, outputs, tracking
from kubetune.train import model as model_lib
from kubetune.train.batches import ROW_VALUES, Collate, Plan, eval_batches, make_plan, train_windows
from kubetune.train.checkpoint import TrainerState
from kubetune.train.errors import Preempted
from kubetune.train.lisa import Lisa
from kubetune.train.loss import CausalLMLoss, causal_lm, loss_function
from kubetune.train.model_options import activation_offloading
from kubetune.train.preference import PreferenceLoss
from kubetune.train.preference_setup import preference_module
from kubetune.train.progress import Progress, Reporters, build_reporters
from kubetune.train.qat import FakeQuantSwitch
from kubetune.train.sync import Interval, PendingLog, StepCounts, log_values
from kubetune.train.watchdog import LossWatchdog

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from kubetune.config import TrainConfig
    from kubetune.data import PackedCollator, PreparedData

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything setup builds; the training loop only reads it (and mutates `state`)."""

    cfg: TrainConfig
    accelerator: Accelerator
    module: torch.nn.Module  # the prepared CausalLMLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch's LRScheduler or ReduceLROnPlateau (optim.build_scheduler)
    tokenizer: PreTrainedTokenizerBase  # a transformers tokenizer or its mistral-common backend
    data: PreparedData
    plan: Plan
    backend: attention.AttentionBackend
    collate: Collate
    state: TrainerState
    output_dir: Path
    reporters: Reporters
    last_checkpoint: str | None = None
    clock: float = 0.0  # perf_counter of the last train_seconds update
    pending_log: PendingLog | None = None  # the last train log line, its values still on the GPU
    trainable: checkpoint.ShardedTrainableState | None = None  # an adapter under FSDP checkpoints this
    last_rewards: dict | None = None  # preference runs: the latest train line's metrics (status.progress)
    data_rank: int = 0  # this rank's place among the data-parallel ranks (config/mesh.py)
    data_world: int = 1  # data-parallel ranks: each reads its own rows
    group: int = 1  # ranks that read the same rows (a tensor/context-parallel group); sums count each once


class StopFlag:
    """Set by SIGTERM (Kubernetes preemption); the loop checks it at every step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: signal.Handlers | Callable[[int, FrameType | None], Any] | int | None = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: checkpointing at the next step boundary, then exiting")
        self.requested = True


def preflight(cfg: TrainConfig, topo: distributed.Topology) -> None:
    """Every check that needs no model weights: bad input stops here, before anything is written."""
    attention.check_request(cfg, cuda=topo.cuda)
    model_lib.check_request(cfg, cuda=topo.cuda)
    optim.check_request(cfg, cuda=topo.cuda, fsdp2=distributed.fsdp2_requested(cfg, cuda=topo.cuda))
    distributed.check_request(cfg, cuda=topo.cuda)
    distributed.mesh_layout(cfg, topo)  # the mesh fills the world exactly (the operator checked it too)
    tracking.check_request(cfg)
    if topo.is_main:
        export.check_destination(cfg)
    model_lib.model_source(cfg, cfg.base_model, "base_model")
    if cfg.tokenizer_config:
        model_lib.model_source(cfg, cfg.tokenizer_config, "tokenizer_config")
    if cfg.lora_model_dir:
        model_lib.model_source(cfg, cfg.lora_model_dir, "lora_model_dir")
    if cfg.resume_from_checkpoint:
        checkpoint.explicit_checkpoint(cfg, cfg.resume_from_checkpoint)
    model_lib.check_pad_token(cfg)


def setup(cfg: TrainConfig, stop: StopFlag) -> Run | None:
    """Build the run; None when output_dir already holds a completed run (a restarted worker)."""
    topo = distributed.topology()
    output_dir = cfg.resolve_path(cfg.output_dir)
    if outputs.is_complete(output_dir):
        log.info("%s already holds a completed run (%s): nothing to do", output_dir, outputs.COMPLETE_MARKER)
        return None
    preflight(cfg, topo)
    tokenizer = model_lib.load_tokenizer(cfg)
    precision = model_lib.resolve_precision(cfg, cuda=topo.cuda)
    if topo.cuda and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    accelerator = distributed.build_accelerator(cfg, precision, topo)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    data = _prepare_data(cfg, tokenizer, accelerator)
    layout = distributed.mesh_layout(cfg, topo)
    # Tensor/context-parallel ranks of one group read the same rows: the rows are dealt to the
    # data-parallel ranks (the mesh's outer dims, so a group's ranks are consecutive).
    data_rank, data_world = topo.rank // layout.in_pod, layout.data_parallel
    plan = make_plan(cfg, len(data.train), data_world, has_eval=data.eval is not None)
    backend = attention.select_backend(cfg, cuda=topo.cuda, context_parallel=layout.cp > 1)
    model = model_lib.load_model(
        cfg,
        tokenizer,
        precision=precision,
        backend=backend,
        device=None if distributed.is_sharded(accelerator) else accelerator.device,
        tp_mesh=distributed.tensor_parallel_mesh(accelerator),
    )
    read_weights = distributed.read_the_weights(model, accelerator, topo)
    trainable_count, total = model_lib.parameter_counts(model)
    log.info(
        "model: %s trainable of %s parameters; attention: %s",
        f"{trainable_count:,}",
        f"{total:,}",
        backend.name,
    )

    objective = cfg.preference_objective()  # rl: what is optimised, else None
    collate = Collate(_collator(cfg, tokenizer), per_pair=objective is not None)
    module: torch.nn.Module
    if objective is None:
        split = distributed.sequence_split(accelerator, tokenizer) if layout.cp > 1 else None
        module = CausalLMLoss(model, loss_fn=loss_function(cfg), sequence_split=split)  # fused-loss switch
    else:  # the reference policy (or precomputed log-probs, added to data) is decided here
        module = preference_module(
            cfg, objective, model, data, collate=collate, backend=backend, accelerator=accelerator
        )
    if layout.tp > 1 and not distributed.is_sharded(accelerator):
        # transformers sharded the model already (DTensor layers) and nothing wraps it: no DDP, whose
        # all-reduce would mix the tensor-parallel shards. The optimizer alone goes through accelerate.
        optimizer = accelerator.prepare(optim.build_optimizer(cfg, module))
    elif distributed.is_sharded(accelerator) and cfg.fsdp and not accelerator.is_fsdp2:
        # FSDP1: the optimizer must see the wrapped (flattened) parameters.
        if cfg.adapter:
            distributed.wrap_trainable_leaves_apart(accelerator, model)
        module = accelerator.prepare(module)
        optimizer = accelerator.prepare(optim.build_optimizer(cfg, module))
    else:  # DDP, FSDP2 and DeepSpeed take model and optimizer together
        fsdp2 = distributed.is_sharded(accelerator) and bool(cfg.fsdp)  # FSDP1 took the branch above
        with distributed.model_parallel_left_to_fully_shard(accelerator):  # TP / CP × FSDP2
            module, optimizer = accelerator.prepare(module, optim.build_optimizer(cfg, module, fsdp2=fsdp2))
    distributed.report_host_memory(accelerator, read_weights)
    scheduler = optim.build_scheduler(cfg, optimizer, plan.total_steps)
    accelerator.register_for_checkpointing(scheduler)
    trainable: checkpoint.ShardedTrainableState | None = None
    if cfg.adapter and (layout.tp > 1 or (cfg.fsdp and distributed.is_sharded(accelerator))):
        # DTensor adapters (FSDP2 shards, tensor-parallel layers): gathered whole, scattered back on resume
        trainable = checkpoint.ShardedTrainableState(accelerator, module, optimizer, scheduler)
    elif cfg.adapter and not distributed.is_sharded(accelerator):
        checkpoint.register_adapter_hooks(accelerator, module)

    # From here on output_dir is written to.
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial(output_dir)
    accelerator.wait_for_everyone()
    state = TrainerState()
    resume = _resume_point(cfg, output_dir, accelerator)
    if resume is not None:
        state = checkpoint.load(accelerator, resume, trainable=trainable)
        state.resumed_from_step = state.step
        log.info("resumed from %s at step %d (epoch %d)", resume, state.step, state.epoch)

    if stop.requested:  # SIGTERM while loading: nothing new to save, stop before training
        raise Preempted(state.step, str(resume) if resume else None)
    run = Run(
        cfg,
        accelerator,
        module,
        optimizer,
        scheduler,
        tokenizer,
        data,
        plan,
        backend,
        collate,
        state,
        output_dir,
        build_reporters(accelerator.is_main_process),
        trainable=trainable,
        data_rank=data_rank,
        data_world=data_world,
        group=layout.in_pod,
    )
    run.last_checkpoint = str(resume) if resume else None
    if accelerator.is_main_process:  # experiment trackers: rank 0's reporters, continued after a resume
        trackers = tracking.start(cfg, output_dir, resumed_from_step=state.resumed_from_step)
        run.reporters.reporters += trackers
        run.reporters.announce_tracking(tracking.describe(trackers))
    log.info(
        "plan: %d steps (%d per epoch, %d rows per step), eval every %s, checkpoint every %s steps",
        plan.total_steps,
        plan.steps_per_epoch,
        plan.rows_per_step,
        plan.eval_every,
        plan.save_every,
    )
    return run


def train(cfg: TrainConfig) -> dict:
    """Run the whole fine-tune; returns the training summary (raises ConfigError for bad input, Preempted)."""
    started = time.time()
    stop = StopFlag()
    stop.install()
    try:
        run = setup(cfg, stop)
        if run is None:
            return outputs.completed_summary(cfg.resolve_path(cfg.output_dir))
        try:
            status = train_loop(run, stop)
            summary = finish(run, status, wall_time=time.time() - started)
        finally:
            run.reporters.close()
        run.accelerator.end_training()
        return summary
    finally:
        stop.uninstall()


def train_loop(run: Run, stop: StopFlag) -> str:
    """Optimizer steps until the plan is done; returns "completed" or "stopped_early"."""
    cfg, acc, state, plan = run.cfg, run.accelerator, run.state, run.plan
    device = acc.device
    windows = train_windows(
        run.data.train,
        plan,
        run.collate,
        cfg,
        epoch=state.epoch,
        step_in_epoch=state.step_in_epoch,
        rank=run.data_rank,
        world_size=run.data_world,
        pin_memory=device.type == "cuda",
    )
    run.module.train()
    interval = Interval(time.perf_counter())
    run.clock = loop_start = time.perf_counter()
    first_step = state.step
    grad_norm = None
    watchdog = LossWatchdog.from_config(cfg, seen=len(state.history))
    lisa = (
        Lisa.from_config(
            cfg, causal_lm(cast("torch.nn.Module", _objective(run).model)), processes=acc.num_processes
        )
        if cfg.lisa_n_layers
        else None
    )
    fake_quant = FakeQuantSwitch.from_config(cfg, run.module)  # qat.fake_quant_after_n_steps, else None
    window = next(windows)
    while state.step < plan.total_steps:
        if lisa is not None:
            lisa.step_begins(state.step)
        if fake_quant is not None:
            fake_quant.step_begins(state.step)
        counts = StepCounts(acc, window, stop, group=run.group)
        # accelerate divides by gradient_accumulation_steps and DDP/FSDP average over the data-parallel
        # ranks: undo both, so the gradient is that of (sum of token losses) / (trained tokens of the step).
        scale = run.data_world * cfg.gradient_accumulation_steps / counts.trained_for_scale()
        for batch in window:
            with acc.accumulate(run.module), activation_offloading(cfg):
                loss_sum = run.module(**_model_inputs(run, batch, device))
                acc.backward(loss_sum * scale)
                interval.loss_sum += loss_sum.detach().float()
        grad_norm = acc.clip_grad_norm_(run.module.parameters(), cfg.max_grad_norm or math.inf)
        run.optimizer.step()
        if not acc.optimizer_step_was_skipped:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if state.step + 1 < plan.total_steps:
            # Collate the next step's rows now, while the GPU still works through this one: the log line
            # below waits for the GPU, and collating after it would leave the GPU idle meanwhile.
            window = next(windows)

        # Read with this step queued: on several ranks the reduced counts left the GPU behind the
        # previous step, so waiting for them here leaves the GPU busy.
        trained, tokens, stopping = counts.resolve()
        state.step += 1
        _after_optimizer_step(run)
        state.step_in_epoch += 1
        if state.step_in_epoch == plan.steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        state.trained_tokens += int(trained)
        state.input_tokens += int(tokens)
        interval.trained += trained
        interval.tokens += tokens
        last = state.step == plan.total_steps

        # The previous log line's values were copied to the host behind the previous step, and this
        # step is queued: waiting for them now leaves the GPU busy (a sync right after queueing a step
        # would drain its queue every step).
        flush_log(run)
        if watchdog is not None and watchdog.tripped(state.history):
            _tick(run)
            return "stopped_loss_watchdog"
        if state.step % cfg.logging_steps == 0 or last:
            elapsed = time.perf_counter() - loop_start
            eta = (plan.total_steps - state.step) * elapsed / max(1, state.step - first_step)
            run.pending_log = begin_log(run, interval, grad_norm, eta)
            interval = Interval(time.perf_counter())
        stop_early = False
        if plan.eval_every and (state.step % plan.eval_every == 0 or last):
            stop_early = evaluate_and_track(run)
        if (plan.save_every and state.step % plan.save_every == 0 and not last) or (stop_early and not last):
            save_checkpoint(run)
        if stopping and not last:  # SIGTERM on some rank: all ranks checkpoint this step and stop
            preempt(run)
        if stop_early:
            log.info(
                "early stopping: eval loss has not improved for %d evaluations",
                state.evals_without_improvement,
            )
            _tick(run)
            return "stopped_early"
    flush_log(run)
    _tick(run)
    return "completed"


def _tick(run: Run) -> None:
    """Add the loop time since the last tick to state.train_seconds (kept across restarts)."""
    now = time.perf_counter()
    run.state.train_seconds += now - run.clock
    run.clock = now


def _model_inputs(run: Run, batch: dict, device: torch.device) -> dict:
    on_device = {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
    return {
        "input_ids": on_device["input_ids"],
        "targets": on_device["targets"],
        **{key: on_device[key] for key in ROW_VALUES if key in on_device},
        **run.backend.model_inputs(on_device),
    }


def begin_log(run: Run, interval: Interval, grad_norm: torch.Tensor | float | None, eta: float) -> PendingLog:
    """The train log line of this step, its values queued for the host; nothing here waits for the GPU."""
    state = run.state
    return PendingLog(
        step=state.step,
        trained_tokens=state.trained_tokens,
        input_tokens=state.input_tokens,
        values=log_values(run.accelerator, interval, grad_norm, group=run.group),
        interval=interval,
        eta=eta,
        learning_rate=float(run.scheduler.get_last_lr()[0]),  # torchao keeps it as a tensor
        rewards=_take_rewards(run),  # after the values are queued: it reads its sums from the GPU
    )


def _objective(run: Run) -> torch.nn.Module:
    return getattr(run.module, "module", run.module)  # inside DDP's wrapper (rl: runs no FSDP/DeepSpeed)


def _after_optimizer_step(run: Run) -> None:
    objective = _objective(run)
    if isinstance(objective, PreferenceLoss) and objective.after_optimizer_step(run.state.step):
        log.info(
            "step %d: the reference model was synced towards the policy (trl.sync_ref_model)", run.state.step
        )


def _take_rewards(run: Run) -> dict | None:
    objective = _objective(run)
    return objective.take_metrics() if isinstance(objective, PreferenceLoss) else None


def flush_log(run: Run) -> None:
    """Report the pending train log line (waits until its values have reached the host)."""
    pending, run.pending_log = run.pending_log, None
    if pending is None:
        return
    line = pending.read()
    state, loss = run.state, line.loss
    state.last_loss = loss
    state.best_loss = loss if state.best_loss is None else min(state.best_loss, loss)
    state.history.append({"step": pending.step, "loss": round(loss, 6), "lr": pending.learning_rate})
    report(
        run,
        "train",
        step=pending.step,
        trained_tokens=pending.trained_tokens,
        input_tokens=pending.input_tokens,
        loss=loss,
        learning_rate=pending.learning_rate,
        grad_norm=line.grad_norm,
        tokens_per_second=line.tokens_per_second,
        eta_seconds=pending.eta,
        rewards=pending.rewards,
    )


@torch.no_grad()
def evaluate(run: Run) -> tuple[float, float]:
    """(loss, perplexity) over the whole evaluation split, all ranks."""
    acc = run.accelerator
    run.module.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=acc.device)
    batches = eval_batches(
        run.data.eval,
        run.collate,
        run.cfg,
        rank=run.data_rank,
        world_size=run.data_world,
        pin_memory=acc.device.type == "cuda",
    )
    for batch in batches:
        loss_sum = run.module(**_model_inputs(run, batch, acc.device))
        sums[0] += loss_sum.double()
        sums[1] += batch["n_trained"]
    run.module.train()
    loss_sum, count = acc.reduce(sums / run.group, reduction="sum").tolist()
    loss = loss_sum / max(count, 1.0)
    return loss, math.exp(min(loss, 50.0))


def evaluate_and_track(run: Run) -> bool:
    """Evaluate, report, track the best; True when early stopping says stop."""
    state, patience = run.state, run.cfg.early_stopping_patience
    flush_log(run)  # the eval report carries the latest train loss
    objective = _objective(run)
    perplexity: float | None  # None for a pair loss (below)
    with objective.metrics_apart() if isinstance(objective, PreferenceLoss) else nullcontext():
        loss, perplexity = evaluate(run)
        eval_rewards = _take_rewards(run)  # the eval pairs' (rank 0's), apart from the train pairs
    if eval_rewards is not None:  # a pair loss has no perplexity; the eval pairs' rewards instead
        perplexity, eval_rewards = None, {f"eval_{name}": value for name, value in eval_rewards.items()}
    optim.after_evaluation(run.scheduler, loss)  # reduce_lr_on_plateau / greedy move with the eval loss
    state.last_eval_loss = loss
    if state.best_eval_loss is None or loss < state.best_eval_loss:
        state.best_eval_loss, state.evals_without_improvement = loss, 0
    else:
        state.evals_without_improvement += 1
    report(
        run, "eval", eval_loss=loss, eval_perplexity=perplexity, loss=state.last_loss, rewards=eval_rewards
    )
    return patience is not None and patience > 0 and state.evals_without_improvement >= patience


def save_checkpoint(run: Run) -> str:
    flush_log(run)  # the saved state holds the latest loss and history
    _tick(run)
    path = checkpoint.save(
        run.accelerator,
        run.state,
        run.output_dir,
        total_limit=run.cfg.save_total_limit,
        trainable=run.trainable,
        model_only=run.cfg.save_only_model,
    )
    run.last_checkpoint = str(path)
    report(run, "checkpoint", force=True, loss=run.state.last_loss)
    return run.last_checkpoint


def preempt(run: Run) -> None:
    """SIGTERM: checkpoint unless nothing changed since the last one, then stop (exit 143)."""
    state = run.state
    flush_log(run)
    saved = run.last_checkpoint and run.last_checkpoint.endswith(f"checkpoint-{state.step}")
    path = run.last_checkpoint if saved or state.step == 0 else save_checkpoint(run)
    report(run, "preempted", force=True, loss=state.last_loss)
    raise Preempted(state.step, path)


def report(run: Run, event: str, *, force: bool = False, completed: bool = False, **metrics) -> None:
    if not run.accelerator.is_main_process:
        return
    state = run.state
    step = metrics.pop("step", state.step)
    if event == "train" and metrics.get("rewards"):
        run.last_rewards = metrics["rewards"]
    progress = Progress(
        step=step,
        total_steps=run.plan.total_steps,
        epoch=run.plan.epochs_at(step),
        trained_tokens=metrics.pop("trained_tokens", state.trained_tokens),
        input_tokens=metrics.pop("input_tokens", state.input_tokens),
        last_checkpoint=run.last_checkpoint,
        resumed_from_step=state.resumed_from_step,
        completed=completed,
        output_dir=str(run.output_dir),
        event=event,
        train_rewards=run.last_rewards,
        **metrics,
    )
    run.reporters.report(progress, force=force)


def finish(run: Run, status: str, *, wall_time: float) -> dict:
    """Save the result, write the summary and the completion marker (collective)."""
    acc, state, cfg = run.accelerator, run.state, run.cfg
    if run.data.eval is not None and state.last_eval_loss is None:
        evaluate_and_track(run)
    saved = outputs.save_model(acc, run.module, run.tokenizer, run.output_dir, trainable=run.trainable)
    summary = {
        "status": status,
        "steps": state.step,
        "total_steps": run.plan.total_steps,
        "epochs": round(run.plan.epochs_at(state.step), 4),
        "trained_tokens": state.trained_tokens,
        "input_tokens": state.input_tokens,
        "final_train_loss": state.last_loss,
        "best_train_loss": state.best_loss,
        "final_eval_loss": state.last_eval_loss,
        "best_eval_loss": state.best_eval_loss,
        "final_eval_perplexity": None
        if state.last_eval_loss is None or cfg.rl  # a pair loss has no perplexity
        else math.exp(min(state.last_eval_loss, 50.0)),
        "tokens_per_s": round(state.input_tokens / state.train_seconds, 1) if state.train_seconds else None,
        "train_seconds": round(state.train_seconds, 2),
        "wall_time_s": round(wall_time, 2),
        "resumed_from_step": state.resumed_from_step,
        "world_size": acc.num_processes,
        "adapter": cfg.adapter,
        "base_model": cfg.base_model,
        "attention": run.backend.name,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "config_hash": cfg.config_hash(),
        "kubetune_version": __version__,
        "history": state.history,
        "completed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if acc.is_main_process:
        uploaded = export.upload_result(cfg, run.output_dir, saved)
        if uploaded is not None:  # where the result went, the summary itself included
            summary["output_uri"] = {**uploaded, "files": sorted([*uploaded["files"], outputs.SUMMARY])}
            outputs.write_json(run.output_dir / outputs.SUMMARY, summary)
            export.upload_result(cfg, run.output_dir, [outputs.SUMMARY])
        outputs.mark_complete(run.output_dir, summary)
        report(run, "done", force=True, completed=True, loss=state.last_loss)
    acc.wait_for_everyone()
    return summary


def _prepare_data(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> PreparedData:
    from kubetune.data import prepare_datasets

    # Raises DataError: bad input like a UserError (a ConfigError, reported by the runner, exit 2).
    return prepare_datasets(
        cfg, tokenizer, rank=accelerator.process_index, world_size=accelerator.num_processes
    )


def _collator(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PackedCollator:
    from kubetune.data import PackedCollator

    return PackedCollator(
        tokenizer.pad_token_id, pad_to=cfg.sequence_len if cfg.pad_to_sequence_len else None
    )


def _resume_point(cfg: TrainConfig, output_dir: Path, accelerator: Accelerator) -> Path | None:
    if cfg.resume_from_checkpoint:
        return checkpoint.explicit_checkpoint(cfg, cfg.resume_from_checkpoint, accelerator)
    if cfg.auto_resume_from_checkpoints:
        return checkpoint.find_resumable(output_dir, accelerator)
    return None
