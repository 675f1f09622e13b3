"""`streaming: true`: the `datasets` entries read as streams, up to the examples the run needs.

As with `pretraining_dataset`, a hub dataset is then never downloaded or tokenized whole: each entry is
opened as a `datasets` stream and its rows are tokenized in batches, through the entry's format, until
the examples kept cover `max_steps` optimizer steps (micro_batch_size x gradient_accumulation_steps x
processes rows: of sequence_len tokens with sample_packing, one example each without). Entries are
read one after another, as Axolotl concatenates them. What was read then goes through the usual
preparation (evaluation split, shuffle by `seed`, packing) and the prepared-data cache.

`streaming_multipack_buffer_size` (this and pretraining streams): the stream is read through a shuffle
buffer of that many rows, drawn by `seed` (`datasets.IterableDataset.shuffle`), as Axolotl shuffles
its streams; unset, rows are read in the stream's order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kubetune.data.errors import data_error
from kubetune.data.formats import RowProblem, TokenizedExamples
from kubetune.data.loading import load_rows

if TYPE_CHECKING:
    from datasets import IterableDataset

    from kubetune.config import TrainConfig

log = logging.getLogger("kubetune.data")

_BATCH = 256  # rows tokenized per call


def needed_rows(cfg: TrainConfig, world_size: int) -> int:
    """Rows (training sequences) that max_steps optimizer steps consume (a stream needs max_steps, which
    the config's rules require)."""
    return (cfg.max_steps or 0) * cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size


def shuffled_stream(rows: IterableDataset, cfg: TrainConfig) -> IterableDataset:
    """`rows` through a shuffle buffer of streaming_multipack_buffer_size rows."""
    buffer = cfg.streaming_multipack_buffer_size
    if not buffer:
        return rows
    return rows.shuffle(seed=cfg.seed, buffer_size=buffer)


def _batches(rows: IterableDataset, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def stream_datasets(
    cfg: TrainConfig,
    tokenizer: Any,
    sequence_len: int,
    per_dataset: list[dict[str, Any]],
    *,
    world_size: int = 1,
) -> TokenizedExamples:
    """The examples of cfg.datasets read as streams until max_steps has enough of them."""
    from kubetune.data.pipeline import drop_short, drop_unusable, make_format

    packed = cfg.sample_packing
    need = needed_rows(cfg, world_size) * (sequence_len if packed else 1)
    got, parts = 0, []
    for index, entry in enumerate(cfg.datasets or []):
        if got >= need:
            break
        where = f"datasets[{index}]"
        stream = shuffled_stream(load_rows(entry, where, cfg.source_dir, streaming=True), cfg)
        fmt, read, kept = None, 0, 0
        too_long = untrained = too_short = 0
        for batch in _batches(stream, _BATCH):
            if fmt is None:
                fmt = make_format(entry, where, cfg, tokenizer, list(batch[0]))
                missing = [name for name in fmt.required_fields if name not in batch[0]]
                if missing:
                    raise data_error(
                        where,
                        f"the rows have no {', '.join(repr(m) for m in missing)} column (columns: "
                        f"{', '.join(batch[0])})",
                        "map your column names with the format's field keys, or pick the type that matches",
                    )
            try:
                tokenized = fmt.tokenize_rows(batch, first_index=read)
            except RowProblem as problem:
                raise data_error(
                    where, str(problem), "fix or remove that row (rows count from 0 in stream order)"
                ) from None
            read += len(batch)
            examples, long_, untrained_ = drop_unusable(tokenized, sequence_len)
            examples, short_ = drop_short(examples, cfg.min_sample_len)
            too_long, untrained, too_short = too_long + long_, untrained + untrained_, too_short + short_
            parts.append(examples)
            kept += len(examples)
            got += int(examples.lengths.sum()) if packed else len(examples)
            if got >= need:
                break
        per_dataset.append(
            {
                "dataset": where,
                "rows": read,
                "examples": kept,
                "dropped_too_long": too_long,
                "dropped_untrained": untrained,
                "dropped_too_short": too_short,
                "streamed": got,
            }
        )
    if got < need:
        log.warning(
            "the streamed datasets ran out after %d %s; max_steps needs %d: the run repeats the data",
            got,
            "tokens" if packed else "examples",
            need,
        )
    return TokenizedExamples.concat(parts)
