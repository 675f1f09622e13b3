"""prepare_datasets: config + tokenizer -> tokenized, masked, packed, cached train/eval datasets."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from kubetune.data import cache
from kubetune.data.errors import DataError, data_error
from kubetune.data.formats import BUILTIN_FORMATS, PromptFormat, TokenizedExamples, resolve_format
from kubetune.data.formats.base import gather_index
from kubetune.data.formats.chat_template import ChatTemplate
from kubetune.data.formats.instruct import Pretokenized
from kubetune.data.formats.mistral_chat import MistralChat, is_mistral_common
from kubetune.data.loading import data_fingerprint, load_rows
from kubetune.data.packing import pack, packing_efficiency
from kubetune.data.pairs import drop_unusable_pairs, pair_rows, split_eval_pairs
from kubetune.data.pretraining import needed_tokens, stream_pretraining
from kubetune.data.streaming import needed_rows, stream_datasets
from kubetune.data.tokenizing import tokenize_dataset

if TYPE_CHECKING:
    from kubetune.config import DatasetConfig, TrainConfig

Entry = TypeVar("Entry")

log = logging.getLogger("kubetune.data")

# Config keys that change the prepared tokens; everything else (lr, lora, ...) reuses the cache.
TOKEN_KEYS = (
    "datasets",
    "test_datasets",
    "sequence_len",
    "sample_packing",
    "rl",  # preference pairs: two examples per row, kept and split by pair
    "eval_sample_packing",
    "train_on_inputs",
    "val_set_size",
    "seed",
    "chat_template",
    "chat_template_jinja",
    "tokenizer_use_mistral_common",
    "special_tokens",
    "tokens",
    "eot_tokens",
    "min_sample_len",
    "dataset_exact_deduplication",
    "streaming",
    "streaming_multipack_buffer_size",  # which rows a stream's shuffle buffer yields first
)


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset: input_ids, labels, position_ids[, seq_lens]
    eval: Any | None
    stats: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def prepare_datasets(cfg: TrainConfig, tokenizer, *, rank: int = 0, world_size: int = 1) -> PreparedData:
    """Tokenize, mask, split and pack cfg.datasets into cfg.dataset_prepared_path (or reuse it).

    Under torchrun pass the global rank: rank 0 prepares, the others wait for the finished
    directory and load it. With skip_prepare_dataset every rank builds the same data in memory (the
    pipeline is deterministic for a given config) and the cache is neither read nor written.
    Raises DataError naming `datasets[i]` when a dataset is unusable.
    """
    started = time.perf_counter()
    if cfg.skip_prepare_dataset:
        if cfg.dataset_prepared_path:
            log.info("skip_prepare_dataset: dataset_prepared_path is neither read nor written")
        data = build_prepared(cfg, tokenizer, world_size=world_size)
        done = f"built prepared data in memory on rank {rank} (skip_prepare_dataset)"
    else:
        path, built = cache.build_or_wait(
            prepared_root(cfg),
            preparation_key(cfg, tokenizer, world_size=world_size),
            lambda out: write_prepared(build_prepared(cfg, tokenizer, world_size=world_size), out),
            rank=rank if world_size > 1 else 0,
        )
        data = load_prepared(path)
        done = f"{'built' if built else 'reused'} prepared data {path}"
    counts = {k: data.stats[k] for k in ("examples", "packed_rows", "packing_efficiency") if k in data.stats}
    log.info("%s in %.1fs: %s", done, time.perf_counter() - started, json.dumps(counts))
    return data


def prepared_root(cfg: TrainConfig) -> Path:
    """dataset_prepared_path, default <output_dir>/prepared; relative to the config's directory."""
    return cfg.resolve_path(cfg.dataset_prepared_path or Path(cfg.output_dir) / "prepared")


def preparation_key(cfg: TrainConfig, tokenizer, *, world_size: int = 1) -> str:
    """The cache key: data content, tokenizer, token-affecting config keys, pipeline version (and for a
    pretraining stream, how many tokens are read from it)."""
    source_dir = cfg.source_dir
    entries = [*_entries("datasets", cfg.datasets), *_entries("test_datasets", cfg.test_datasets)]
    parts = {
        "version": cache.PIPELINE_VERSION,
        "config": {name: _plain(getattr(cfg, name)) for name in TOKEN_KEYS},
        "data": [data_fingerprint(entry, source_dir) for _, entry in entries],
        "formats": [_format_source(entry, source_dir) for _, entry in entries],
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
    }
    if cfg.pretraining_dataset:
        parts["stream"] = {
            "data": [data_fingerprint(entry, source_dir) for entry in cfg.pretraining_dataset],
            "tokens": needed_tokens(cfg, cfg.sequence_len, world_size),
        }
    elif cfg.streaming:  # how much of each stream is read
        parts["stream"] = {"rows": needed_rows(cfg, world_size)}
    return cache.digest(parts)


def build_prepared(cfg: TrainConfig, tokenizer, *, world_size: int = 1) -> PreparedData:
    """Everything prepare_datasets does, in memory, without the cache (world_size: the processes that
    will train, which decides how much of a pretraining stream is read)."""
    started = time.perf_counter()
    sequence_len = cfg.sequence_len
    seed = cfg.seed
    streamed = bool(cfg.pretraining_dataset)
    if not streamed and not cfg.datasets:
        raise data_error("datasets", "no datasets configured", "add at least one entry under datasets")
    per_dataset: list[dict[str, Any]] = []  # counts of the training entries
    per_test_dataset: list[dict[str, Any]] = []
    if streamed:
        train = stream_pretraining(cfg, tokenizer, sequence_len, per_dataset, world_size=world_size)
    elif cfg.streaming:
        train = stream_datasets(cfg, tokenizer, sequence_len, per_dataset, world_size=world_size)
    else:
        train = _tokenize_entries(
            cfg, tokenizer, _entries("datasets", cfg.datasets), sequence_len, per_dataset
        )
    preference = bool(cfg.rl)  # two examples per row, kept and split by pair (data/pairs.py)
    if not len(train):
        raise nothing_left_error(per_dataset, sequence_len)
    deduplicate = bool(cfg.dataset_exact_deduplication)
    seen: set[bytes] = set()
    duplicates = 0
    if deduplicate:  # before the split, so no example is both trained on and evaluated (as Axolotl does)
        train, duplicates = drop_duplicates(train, seen)
    val_set_size = float(cfg.val_set_size)
    if cfg.test_datasets:
        if val_set_size:
            raise data_error(
                "val_set_size",
                "both test_datasets and val_set_size are set",
                "set val_set_size: 0 to evaluate on test_datasets, or drop test_datasets",
            )
        evaluation = _tokenize_entries(
            cfg, tokenizer, _entries("test_datasets", cfg.test_datasets), sequence_len, per_test_dataset
        )
        if deduplicate:  # also drops evaluation examples that are training examples
            evaluation, eval_duplicates = drop_duplicates(evaluation, seen)
            duplicates += eval_duplicates
        if not len(evaluation):
            raise nothing_left_error(per_test_dataset, sequence_len)
    else:
        train, evaluation = (split_eval_pairs if preference else split_eval)(train, val_set_size, seed)
    packed = cfg.sample_packing
    eval_packed = packed if cfg.eval_sample_packing is None else cfg.eval_sample_packing
    rows_of = (
        (lambda examples, _packed: pair_rows(examples))
        if preference
        else (lambda examples, packed_: to_rows(examples, sequence_len, packed=packed_, seed=seed))
    )
    train_rows, train_stats = rows_of(train, packed)
    stats: dict[str, Any] = {
        **train_stats,
        "datasets": per_dataset + per_test_dataset,
        "dropped_too_long": sum(d["dropped_too_long"] for d in per_dataset),
        "dropped_untrained": sum(d["dropped_untrained"] for d in per_dataset),
        "dropped_too_short": sum(d["dropped_too_short"] for d in per_dataset),
        "dropped_duplicates": duplicates,
        "sequence_len": sequence_len,
    }
    eval_rows = None
    if evaluation is not None and len(evaluation):
        eval_rows, eval_stats = rows_of(evaluation, eval_packed)
        stats["eval"] = eval_stats
    stats["prepare_seconds"] = round(time.perf_counter() - started, 3)
    return PreparedData(train=train_rows, eval=eval_rows, stats=stats)


def make_format(
    entry: DatasetConfig, where: str, cfg: TrainConfig, tokenizer: Any, columns: list[str] | None = None
) -> PromptFormat:
    """The format object for one dataset entry (type None with input_ids columns = pretokenized)."""
    type_name = entry.type
    if type_name is None and columns is not None and "input_ids" in columns:
        cls: type[PromptFormat] = Pretokenized
    elif type_name is None:
        raise data_error(
            f"{where}.type",
            "no type given",
            f"set type to one of {', '.join(BUILTIN_FORMATS)} or my_module.MyFormat",
        )
    else:
        cls = resolve_format(type_name, path=f"{where}.type", source_dir=cfg.source_dir, rl=cfg.rl)
    if issubclass(cls, ChatTemplate) and is_mistral_common(tokenizer):
        if cls is not ChatTemplate:
            raise data_error(
                f"{where}.type",
                f"{type_name} renders conversations with a Jinja chat template, and a mistral-common "
                "tokenizer has none",
                "use type: chat_template (mistral-common encodes the conversation), or remove "
                "tokenizer_use_mistral_common",
            )
        cls = MistralChat  # the encoder of mistral-common, not a Jinja template
    chat_template = cfg.chat_template
    if cfg.chat_template_jinja and chat_template in (None, "jinja"):
        chat_template = cfg.chat_template_jinja  # the template text itself
    extra = {"eot_tokens": cfg.eot_tokens} if issubclass(cls, ChatTemplate) else {}
    try:
        return cls(
            tokenizer,
            entry,
            train_on_inputs=cfg.train_on_inputs,
            chat_template=chat_template,
            **extra,
        )
    except ValueError as exc:
        raise data_error(where, str(exc), "see docs/data.md for this format's options") from exc


def drop_unusable(examples: TokenizedExamples, sequence_len: int) -> tuple[TokenizedExamples, int, int]:
    """Drop examples longer than sequence_len (as Axolotl does) or with no trained token."""
    too_long = examples.lengths > sequence_len
    untrained = examples.trained_per_example == 0
    keep = ~(too_long | untrained)
    if keep.all():
        return examples, 0, 0
    return examples.select(np.flatnonzero(keep)), int(too_long.sum()), int((untrained & ~too_long).sum())


def nothing_left_error(per_dataset: list[dict[str, Any]], sequence_len: int) -> DataError:
    """The error for datasets that kept no example, blaming what dropped them (not a later step)."""
    rows = sum(d["rows"] for d in per_dataset)
    too_long = sum(d["dropped_too_long"] for d in per_dataset)
    untrained = sum(d["dropped_untrained"] for d in per_dataset)
    too_short = sum(d.get("dropped_too_short", 0) for d in per_dataset)
    where = ", ".join(d["dataset"] for d in per_dataset)
    if too_short and too_short >= too_long + untrained:
        return data_error(
            "min_sample_len",
            f"all {rows} examples of {where} were dropped: {too_short} are shorter than min_sample_len",
            "lower min_sample_len or remove it",
        )
    if too_long and too_long >= untrained:
        longest = max(d.get("longest_example", 0) for d in per_dataset)
        return data_error(
            "sequence_len",
            f"all {rows} examples of {where} were dropped: {too_long} are longer than sequence_len "
            f"{sequence_len} tokens (the longest has {longest}), {untrained} have no trained token",
            f"raise sequence_len to at least {longest}, or shorten the examples",
        )
    if untrained:
        return data_error(
            where,
            f"all {rows} examples were dropped: {untrained} have no trained token"
            + (f" and {too_long} are longer than sequence_len {sequence_len}" if too_long else ""),
            "check which turns or fields are trained (train_on_inputs, roles_to_train, the format's "
            "field names): every example needs at least one trained token",
        )
    return data_error(where, f"the dataset has no rows ({rows})", "check the path, split and data_files")


def drop_short(examples: TokenizedExamples, min_len: int | None) -> tuple[TokenizedExamples, int]:
    """Drop examples of fewer than `min_sample_len` tokens (Axolotl's min_sample_len); unset keeps all."""
    if not min_len:
        return examples, 0
    short = examples.lengths < int(min_len)
    if not short.any():
        return examples, 0
    return examples.select(np.flatnonzero(~short)), int(short.sum())


def drop_duplicates(examples: TokenizedExamples, seen: set[bytes]) -> tuple[TokenizedExamples, int]:
    """Drop every example whose tokens and labels equal an earlier one's, or one already in `seen`
    (Axolotl's dataset_exact_deduplication; on the tokenized examples, so two rows that differ only in
    fields the format does not read count as one). `seen` gains the kept examples' digests."""
    keep = []
    for index in range(len(examples)):
        start, end = examples.offsets[index], examples.offsets[index + 1]
        digest = hashlib.blake2b(examples.input_ids[start:end].tobytes(), digest_size=16)
        digest.update(examples.labels[start:end].tobytes())
        key = digest.digest()
        if key not in seen:
            seen.add(key)
            keep.append(index)
    dropped = len(examples) - len(keep)
    if dropped:
        log.info("dataset_exact_deduplication: dropped %d duplicate examples", dropped)
    return (examples.select(np.asarray(keep, dtype=np.int64)) if dropped else examples), dropped


def split_eval(examples: TokenizedExamples, val_set_size: float, seed: int):
    """(train, eval) by a seeded permutation: a fraction when < 1, else a count. eval None when 0."""
    order = np.random.default_rng(seed).permutation(len(examples))
    if not val_set_size:
        return examples.select(order), None
    count = math.ceil(len(examples) * val_set_size) if val_set_size < 1 else int(val_set_size)
    if count >= len(examples):
        raise data_error(
            "val_set_size",
            f"val_set_size {val_set_size} leaves no training examples (there are {len(examples)})",
            "use a fraction below 1 or a smaller count",
        )
    return examples.select(order[count:]), examples.select(np.sort(order[:count]))


def to_rows(examples: TokenizedExamples, sequence_len: int, *, packed: bool, seed: int):
    """(datasets.Dataset, stats): packed rows with seq_lens, or one example per row."""
    lengths = examples.lengths
    stats: dict[str, Any] = {
        "examples": len(examples),
        "tokens": int(lengths.sum()),
        "trained_tokens": int((examples.labels != -100).sum()),
        "max_example_len": int(lengths.max()) if len(lengths) else 0,
        "mean_example_len": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
    }
    if packed:
        arrays = pack(examples, sequence_len)
        rows = len(arrays["row_offsets"]) - 1
        # Shuffle the rows: packing orders them longest-first.
        order = np.random.default_rng(seed).permutation(rows)
        table = _packed_table(arrays, order)
        stats |= {
            "packed_rows": rows,
            "packing_efficiency": round(packing_efficiency(lengths, rows, sequence_len), 4),
        }
    else:
        position_ids = np.arange(len(examples.input_ids)) - np.repeat(examples.offsets[:-1], lengths)
        table = _table(
            {"input_ids": examples.input_ids, "labels": examples.labels, "position_ids": position_ids},
            examples.offsets,
        )
        stats |= {"packed_rows": len(examples), "packing_efficiency": None}
    return _dataset(table), stats


def write_prepared(data: PreparedData, out: Path) -> None:
    data.train.save_to_disk(str(out / "train"))
    if data.eval is not None:
        data.eval.save_to_disk(str(out / "eval"))
    (out / "stats.json").write_text(json.dumps(data.stats, indent=2, sort_keys=True) + "\n")


def load_prepared(path: Path) -> PreparedData:
    import datasets

    stats = json.loads((path / "stats.json").read_text())
    train = datasets.load_from_disk(str(path / "train"))
    evaluation = datasets.load_from_disk(str(path / "eval")) if (path / "eval").exists() else None
    return PreparedData(train=train, eval=evaluation, stats=stats, path=path)


# -- helpers ---------------------------------------------------------------------------------


def _tokenize_entries(
    cfg: TrainConfig,
    tokenizer: Any,
    entries: list[tuple[str, DatasetConfig]],
    sequence_len: int,
    per_dataset: list[dict[str, Any]],
) -> TokenizedExamples:
    parts = []
    for where, entry in entries:
        rows = load_rows(entry, where, cfg.source_dir)
        fmt = make_format(entry, where, cfg, tokenizer, rows.column_names)
        tokenized = tokenize_dataset(rows, fmt, where, num_proc=num_proc(cfg.dataset_num_proc))
        drop = drop_unusable_pairs if cfg.rl else drop_unusable
        examples, too_long, untrained = drop(tokenized, sequence_len)
        examples, too_short = drop_short(examples, cfg.min_sample_len)
        per_dataset.append(
            {
                "dataset": where,
                "rows": len(rows),
                "examples": len(examples),
                "dropped_too_long": too_long,
                "dropped_untrained": untrained,
                "longest_example": int(tokenized.lengths.max()) if len(tokenized) else 0,
                "dropped_too_short": too_short,
            }
        )
        if too_short:
            log.warning("%s: dropped %d examples shorter than min_sample_len", where, too_short)
        if too_long:
            log.warning("%s: dropped %d examples longer than sequence_len=%d", where, too_long, sequence_len)
        if untrained:
            log.warning("%s: dropped %d examples with no trained token", where, untrained)
        parts.append(examples)
    return TokenizedExamples.concat(parts)


def num_proc(configured: int | None) -> int:
    """dataset_num_proc, default the CPUs this process may use, at most 8."""
    if configured:
        return configured
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus)


def _entries(key: str, entries: Sequence[Entry] | None) -> list[tuple[str, Entry]]:
    """(`key[i]`, entry) of each entry: the key path problems name."""
    return [(f"{key}[{index}]", entry) for index, entry in enumerate(entries or ())]


def _plain(value: Any) -> Any:
    """JSON-able form of config values (pydantic models, containers)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _format_source(entry: DatasetConfig, source_dir: Path | None) -> str | None:
    """Hash of a user format's source file, so editing it invalidates the cache."""
    type_name = entry.type
    if not isinstance(type_name, str) or type_name in BUILTIN_FORMATS or "." not in type_name:
        return None
    try:
        module = inspect.getmodule(resolve_format(type_name, path="", source_dir=source_dir))
        source = inspect.getsource(module) if module is not None else None
    except (DataError, OSError, TypeError):
        return None  # reported by make_format when the data is prepared
    if source is None:
        return None
    return cache.digest(source)


def _table(columns: dict[str, np.ndarray], offsets: np.ndarray):
    import pyarrow as pa

    large = offsets[-1] >= 2**31  # list<> offsets are int32
    offset_array = pa.array(offsets.astype(np.int64 if large else np.int32))
    make = pa.LargeListArray.from_arrays if large else pa.ListArray.from_arrays
    return pa.table(
        {
            name: make(offset_array, pa.array(values.astype(np.int32, copy=False)))
            for name, values in columns.items()
        }
    )


def _packed_table(arrays: dict[str, np.ndarray], order: np.ndarray):

    row_offsets, seq_offsets = arrays["row_offsets"], arrays["seq_offsets"]
    row_lens = np.diff(row_offsets)[order]
    gather = gather_index(row_offsets[:-1][order], row_lens)
    new_offsets = np.concatenate([[0], np.cumsum(row_lens)])
    seq_counts = np.diff(seq_offsets)[order]
    seq_gather = gather_index(seq_offsets[:-1][order], seq_counts)
    table = _table(
        {name: arrays[name][gather] for name in ("input_ids", "labels", "position_ids")}, new_offsets
    )
    seq_lens = _table(
        {"seq_lens": arrays["seq_lens"][seq_gather]}, np.concatenate([[0], np.cumsum(seq_counts)])
    )
    return table.append_column("seq_lens", seq_lens.column("seq_lens"))


def _dataset(table):
    import uuid

    import datasets
    from datasets.table import InMemoryTable

    # A fresh fingerprint: letting datasets derive one would hash (pickle) every token.
    return datasets.Dataset(InMemoryTable(table), fingerprint=uuid.uuid4().hex)
