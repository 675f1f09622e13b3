"""`pretraining_dataset`: raw text read as a stream, up to the tokens the run needs.

A pretraining corpus (c4, fineweb) is far larger than a run reads, so it is never downloaded or
prepared whole: each entry is opened as a stream (`datasets` streaming) and read in order (or through
the shuffle buffer of `streaming_multipack_buffer_size`, data/streaming.py), entry after entry, until the documents read hold the tokens of `max_steps` optimizer steps (micro_batch_size
x gradient_accumulation_steps x processes rows of sequence_len tokens). Each document becomes
bos + text + eos, cut into pieces of at most `sequence_len` tokens (a long document is not dropped);
every token is trained. The pieces then go through the usual preparation (shuffled by `seed`,
packed with `sample_packing`) and the prepared-data cache, keyed by the corpus and that token count.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune.data.errors import data_error
from kubetune.data.formats.base import IGNORE_INDEX, TokenizedExamples, encode_texts, special_prefix_ids
from kubetune.data.loading import load_rows
from kubetune.data.streaming import needed_rows, shuffled_stream

if TYPE_CHECKING:
    from kubetune.config import TrainConfig

log = logging.getLogger("kubetune.data")

_BATCH = 256  # documents tokenized per call


def needed_tokens(cfg: TrainConfig, sequence_len: int, world_size: int) -> int:
    """Tokens that max_steps optimizer steps consume (rows of sequence_len tokens)."""
    return needed_rows(cfg, world_size) * sequence_len


def stream_pretraining(
    cfg: TrainConfig,
    tokenizer: Any,
    sequence_len: int,
    per_dataset: list[dict[str, Any]],
    *,
    world_size: int = 1,
) -> TokenizedExamples:
    """The pieces of the documents read from cfg.pretraining_dataset, until needed_tokens are read."""
    need = needed_tokens(cfg, sequence_len, world_size)
    bos = special_prefix_ids(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pieces: list[list[int]] = []
    total = 0
    for index, entry in enumerate(cfg.pretraining_dataset or ()):
        if total >= need:
            break
        where = f"pretraining_dataset[{index}]"
        column = entry.text_column or "text"
        documents, first_piece = 0, len(pieces)
        batch: list[str] = []
        stream = shuffled_stream(load_rows(entry, where, cfg.source_dir, streaming=True), cfg)
        for row in stream:
            text = row.get(column)
            if not isinstance(text, str):
                raise data_error(
                    f"{where}.text_column",
                    f"document {documents} has no text in column {column!r} (columns: {', '.join(row)})",
                    "set text_column to the column holding the text",
                )
            documents += 1
            batch.append(text)
            if len(batch) == _BATCH:
                total += _cut(encode_texts(tokenizer, batch), bos, eos, sequence_len, pieces)
                batch = []
                if total >= need:
                    break
        if batch:
            total += _cut(encode_texts(tokenizer, batch), bos, eos, sequence_len, pieces)
        per_dataset.append(
            {
                "dataset": where,
                "rows": documents,
                "examples": len(pieces) - first_piece,
                "dropped_too_long": 0,
                "dropped_untrained": 0,
                "dropped_too_short": 0,
                "streamed_tokens": total,
            }
        )
    if total < need:
        log.warning(
            "pretraining_dataset ran out after %d tokens; max_steps needs %d: the run repeats the data",
            total,
            need,
        )
    examples = TokenizedExamples.from_lists(pieces, pieces)
    if len(examples):  # nothing before a piece's first token predicts it
        examples.labels[examples.offsets[:-1]] = IGNORE_INDEX
    return examples


def _cut(encoded: list[list[int]], bos: list[int], eos: list[int], size: int, out: list[list[int]]) -> int:
    """Append each document's pieces of at most `size` tokens to `out`; returns the tokens added."""
    added = 0
    for ids in encoded:
        tokens = np.asarray(bos + ids + eos, dtype=np.int64)
        for start in range(0, len(tokens), size):
            piece = tokens[start : start + size].tolist()
            if len(piece) > 1:  # a lone token trains nothing
                out.append(piece)
                added += len(piece)
    return added
