"""The step plan and the order in which rows reach each rank.

One optimizer step consumes `rows_per_step = micro_batch_size × gradient_accumulation_steps ×
world_size` rows: a contiguous slice of the epoch's seeded permutation, dealt round-robin to the
ranks and cut into micro-batches. The same global batch therefore trains on the same rows whatever
the split between processes and accumulation, and the data position of a run is just
(epoch, steps done in the epoch): a resumed run rebuilds the permutation and skips those steps.
The rows that do not fill a whole step at the end of an epoch are left out of that epoch (a new
permutation each epoch leaves out different ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from kubetune.train.errors import UserError
from kubetune.train.loss import IGNORE_INDEX, shift_targets


@dataclass(frozen=True)
class Plan:
    rows_per_step: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int | None
    save_every: int | None

    def epochs_at(self, step: int) -> float:
        return step / self.steps_per_epoch


def make_plan(cfg, train_rows: int, world_size: int, *, has_eval: bool) -> Plan:
    rows_per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
    steps_per_epoch = train_rows // rows_per_step
    if steps_per_epoch == 0:
        raise UserError(
            f"the training data has {train_rows} rows, fewer than one optimizer step needs: micro_batch_size "
            f"{cfg.micro_batch_size} × gradient_accumulation_steps {cfg.gradient_accumulation_steps} × "
            f"{world_size} process(es) = {rows_per_step}.",
            "Lower micro_batch_size or gradient_accumulation_steps, or add data (with sample_packing, "
            "several examples share a row).",
            key="micro_batch_size",
        )
    if cfg.num_epochs is None and cfg.max_steps is None:
        total = steps_per_epoch
    elif cfg.num_epochs is None:
        total = cfg.max_steps
    else:
        total = max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
    return Plan(
        rows_per_step=rows_per_step,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_every=_eval_every(cfg, steps_per_epoch, total) if has_eval else None,
        save_every=_save_every(cfg, steps_per_epoch, total),
    )


# transformers' defaults for the `steps` strategies without an interval (TrainingArguments).
HF_DEFAULT_SAVE_STEPS = 500


def _eval_every(cfg, steps_per_epoch: int, total: int) -> int | None:
    """eval_strategy (transformers' spelling) or the interval keys: `no` never, `epoch` once per epoch,
    `steps` every eval_steps (default logging_steps, as in transformers)."""
    if cfg.eval_strategy == "no":
        return None
    if cfg.eval_strategy == "epoch":
        return steps_per_epoch
    interval = _interval(cfg.eval_steps, cfg.evals_per_epoch, steps_per_epoch, total)
    if interval is None and cfg.eval_strategy == "steps":
        return cfg.logging_steps
    return interval


def _save_every(cfg, steps_per_epoch: int, total: int) -> int | None:
    """save_strategy or the interval keys: `no` never (a SIGTERM still checkpoints), `epoch` once per
    epoch, `steps` every save_steps (default 500, as in transformers); unset: once per epoch."""
    if cfg.save_strategy == "no":
        return None
    if cfg.save_strategy == "steps" and cfg.save_steps is None:
        return HF_DEFAULT_SAVE_STEPS
    return _interval(cfg.save_steps, cfg.saves_per_epoch, steps_per_epoch, total) or steps_per_epoch


def _interval(steps, per_epoch, steps_per_epoch: int, total: int) -> int | None:
    """Every N steps from `*_steps` (a count, or a fraction of the total) or `*s_per_epoch`."""
    if steps is not None:
        return max(1, math.ceil(steps * total)) if isinstance(steps, float) and steps < 1 else int(steps)
    if per_epoch:
        return max(1, steps_per_epoch // per_epoch)
    return None


def step_indices(
    rows: int,
    epoch: int,
    plan: Plan,
    *,
    seed: int,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    lengths: Sequence[int] | None = None,
):
    """For each step of `epoch`: this rank's micro-batches, as lists of row indices.

    With `lengths` (group_by_length), the permutation is transformers' length-grouped one over whole
    optimizer steps: each step's rows are neighbours in a megabatch sorted by length, so every
    micro-batch dealt from them holds rows of similar length.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if lengths is None:
        order = torch.randperm(rows, generator=generator).tolist()
    else:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = get_length_grouped_indices(lengths, plan.rows_per_step, generator=generator)
    steps = []
    for step in range(plan.steps_per_epoch):
        chunk = order[step * plan.rows_per_step : (step + 1) * plan.rows_per_step]
        mine = chunk[rank::world_size]
        steps.append([mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)])
    return steps


# Per-row values of preference data that the loss reads beside the tokens (kubetune.train.preference).
ROW_VALUES = ("desirable", "ref_logps")


class Collate:
    """PackedCollator plus what the loop needs: next-token targets and token counts (on CPU, no sync)."""

    def __init__(self, collator, *, per_pair: bool = False):
        self.collator = collator
        # Preference rows (one pair each): the loss is a sum over pairs, so the step divides by pairs.
        self.per_pair = per_pair

    def __call__(self, rows) -> dict:
        batch = self.collator(rows)
        masked = [i for i, row in enumerate(rows) if row.get("_masked")]
        if masked:  # eval padding rows: forwarded (every rank runs each batch), never counted
            batch["labels"][masked] = IGNORE_INDEX
        for key in ROW_VALUES:  # preference rows: KTO's label, precomputed reference log-probs
            if key in rows[0]:
                batch[key] = torch.tensor([row[key] for row in rows])
        batch["targets"] = shift_targets(batch["labels"], batch["position_ids"])
        trained = batch["targets"] != IGNORE_INDEX
        batch["n_trained"] = int(trained.any(dim=1).sum() if self.per_pair else trained.sum())
        batch["n_tokens"] = int(batch["attention_mask"].sum())
        return batch


def loader(dataset, batch_indices: list[list[int]], collate: Collate, cfg, *, pin_memory: bool):
    from torch.utils.data import DataLoader

    workers = cfg.dataloader_num_workers
    return DataLoader(
        dataset,
        batch_sampler=batch_indices,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory and cfg.dataloader_pin_memory,
        prefetch_factor=cfg.dataloader_prefetch_factor if workers else None,
        persistent_workers=False,
    )


def train_windows(
    dataset,
    plan: Plan,
    collate: Collate,
    cfg,
    *,
    epoch: int,
    step_in_epoch: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
) -> Iterator[list[dict]]:
    """Endless stream of optimizer steps (each a list of gradient_accumulation_steps micro-batches),
    starting at the data position (epoch, step_in_epoch)."""
    lengths = row_lengths(dataset) if cfg.group_by_length else None
    while True:
        steps = step_indices(
            len(dataset),
            epoch,
            plan,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            micro_batch_size=cfg.micro_batch_size,
            lengths=lengths,
        )[step_in_epoch:]
        batches = iter(
            loader(dataset, [mb for step in steps for mb in step], collate, cfg, pin_memory=pin_memory)
        )
        for step in steps:
            yield [next(batches) for _ in step]
        epoch, step_in_epoch = epoch + 1, 0


def row_lengths(dataset) -> list[int]:
    """Tokens per row, read from the Arrow column (no row is decoded into Python lists)."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


def eval_batches(dataset, collate: Collate, cfg, *, rank: int, world_size: int, pin_memory: bool):
    """This rank's share of the evaluation rows. Every rank runs the same number of batches (sharded
    models need every rank in every forward); ranks with fewer rows repeat one with labels masked."""
    size = cfg.eval_batch_size or cfg.micro_batch_size
    per_rank = math.ceil(len(dataset) / world_size)
    mine = list(range(rank, len(dataset), world_size))
    padding = per_rank - len(mine)
    wrapped = _Masked(dataset, len(dataset))
    indices = mine + [len(dataset)] * padding  # index len(dataset) = row 0, masked
    batches = [indices[i : i + size] for i in range(0, len(indices), size)]
    return loader(wrapped, batches, collate, cfg, pin_memory=pin_memory)


class _Masked:
    """The dataset plus one extra index that returns row 0 flagged as masked (eval padding)."""

    def __init__(self, dataset, extra: int):
        self.dataset, self.extra = dataset, extra

    def __len__(self) -> int:
        return self.extra + 1

    def __getitem__(self, index: int) -> dict:
        if index == self.extra:
            return {**self.dataset[0], "_masked": True}
        return self.dataset[index]
