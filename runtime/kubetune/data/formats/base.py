"""The public extension point: a PromptFormat turns one dataset row into input_ids and labels.

A format describes a row as *segments*: pieces of text (or literal token ids), each either
trained (its tokens are labels) or not (label -100). Each segment is tokenized on its own, the
way Axolotl tokenizes the prompt and the response separately, so the trained tokens decode to
exactly the trained text, and the prompt tokens are exactly what the prompt alone encodes to at
inference time. Adjacent pieces with the same flag should be one segment (one string), so that
BPE merges across them as it would in running text.

Write a format in a module next to your config and name it as `type: my_module.MyFormat`:

    from kubetune.data.formats import PromptFormat

    class QuestionAnswer(PromptFormat):
        required_fields = ("question", "answer")

        def segments(self, row):
            return [
                (self.bos_ids, False),
                (f"Question: {row['question']}\\nAnswer:", False),
                (" " + row["answer"], True),
                (self.eos_ids, True),  # the model learns to stop
            ]

Override `tokenize_row` instead when the row is not text (it must return equal-length
`input_ids` and `labels`). Segment formats are tokenized in large batches by the fast
tokenizer; `tokenize_row` formats row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE_INDEX = -100


def option(entry: Any, name: str, default: Any = None) -> Any:
    """A key of a dataset entry (a DatasetConfig, or a mapping in a custom format's tests); default when unset.

    Formats are the one reader of entries that may be plain mappings: the pipeline reads the typed config."""
    value = entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)
    return default if value is None else value


# (text or token ids, trained)
Segment = tuple["str | Sequence[int]", bool]


class RowProblem(ValueError):
    """A row the format cannot turn into tokens; the pipeline adds the dataset and row index."""

    def __init__(self, message: str, row: int | None = None):
        self.row = row
        self.message = message
        super().__init__(message if row is None else f"row {row}: {message}")


@dataclass
class TokenizedExamples:
    """Many examples as flat int32 arrays: example k is input_ids[offsets[k]:offsets[k+1]]."""

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray  # int64, len = examples + 1
    # One bool per example where the format gives one (KTO's desirable label), else None.
    flags: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def trained_per_example(self) -> np.ndarray:
        # Differences of a running count, not np.add.reduceat, which misreads empty examples.
        running = np.concatenate([[0], np.cumsum(self.labels != IGNORE_INDEX)])
        return running[self.offsets[1:]] - running[self.offsets[:-1]]

    @classmethod
    def empty(cls) -> TokenizedExamples:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(1, np.int64))

    @classmethod
    def from_lists(
        cls, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> TokenizedExamples:
        ids, offsets = _flatten(input_ids)
        flat_labels, label_offsets = _flatten(labels)
        if not np.array_equal(offsets, label_offsets):
            bad = int(np.flatnonzero(np.diff(offsets) != np.diff(label_offsets))[0])
            raise RowProblem("input_ids and labels have different lengths", bad)
        return cls(ids, flat_labels, offsets)

    @classmethod
    def concat(cls, parts: Sequence[TokenizedExamples]) -> TokenizedExamples:
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        offsets = [parts[0].offsets]
        base = parts[0].offsets[-1]
        for part in parts[1:]:
            offsets.append(part.offsets[1:] + base)
            base += part.offsets[-1]
        flagged = [part.flags is not None for part in parts]
        if any(flagged) and not all(flagged):
            raise ValueError("examples with and without per-example flags cannot be concatenated")
        return cls(
            np.concatenate([part.input_ids for part in parts]),
            np.concatenate([part.labels for part in parts]),
            np.concatenate(offsets),
            np.concatenate([part.flags for part in parts]) if all(flagged) else None,
        )

    def select(self, indices: np.ndarray) -> TokenizedExamples:
        """The examples at `indices`, in that order (one vectorised gather)."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.zeros(len(indices) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = gather_index(self.offsets[indices], lengths)
        flags = None if self.flags is None else self.flags[indices]
        return TokenizedExamples(self.input_ids[gather], self.labels[gather], offsets, flags)


def gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of range(start, start + length) for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _flatten(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    array = pa.array(lists, type=pa.list_(pa.int32()))
    if array.null_count:
        raise RowProblem("token list is null", int(np.flatnonzero(array.is_null().to_numpy(False))[0]))
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return np.array(values, dtype=np.int32), offsets - offsets[0]  # a writable copy, not arrow's buffer


# Texts per call of the Rust tokenizer: measured on 2 cores, calls of a few hundred texts cost
# 30-40% less CPU per token than calls of tens of thousands (bench/preprocess_throughput.py).
ENCODE_BATCH = 512


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added, in batched calls of the fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: correct, just not fast
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips offsets
    ids: list[list[int]] = []
    for start in range(0, len(texts), ENCODE_BATCH):
        ids += [
            encoding.ids for encoding in encode(texts[start : start + ENCODE_BATCH], add_special_tokens=False)
        ]
    return ids


def special_prefix_ids(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before a single text (Llama's bos); [] when none."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return list(with_special[:start])
    return []


class PromptFormat:
    """Turns a dataset row into `{"input_ids": [...], "labels": [...]}` (labels -100 = not trained).

    Subclasses implement `segments(row)` (fast, batched) or override `tokenize_row(row)`.
    Available to them: `self.tokenizer`, `self.dataset` (the `datasets[i]` config entry),
    `self.train_on_inputs`, `self.bos_ids` (what the tokenizer prepends, e.g. [bos]),
    `self.eos_ids` ([eos]), and `self.option(name, default)` for dataset config keys.
    With `train_on_inputs: true` every segment is trained. The first token of every example
    is never a label: nothing inside the example predicts it.
    """

    #: columns every row must have; checked before tokenizing, with a fix naming the mapping key
    required_fields: tuple[str, ...] = ()

    def __init__(self, tokenizer, dataset: Any = None, *, train_on_inputs: bool = False, chat_template=None):
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.train_on_inputs = bool(train_on_inputs)
        self.chat_template = chat_template
        self.bos_ids = special_prefix_ids(tokenizer)
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def option(self, name: str, default: Any = None) -> Any:
        """A `datasets[i]` config key, `default` when unset (works for objects and mappings)."""
        return option(self.dataset, name, default)

    # A row is a mapping; formats whose tokenize_rows expands rows (preference pairs: one item per
    # side) hand segments their own items, hence Any here.
    def segments(self, row: Any) -> list[Segment]:
        raise NotImplementedError(f"{type(self).__name__} must implement segments(row) or tokenize_row(row)")

    def tokenize_row(self, row: Mapping[str, Any]) -> dict[str, list[int]]:
        examples = self.tokenize_rows([row])
        return {"input_ids": examples.input_ids.tolist(), "labels": examples.labels.tolist()}

    def tokenize_rows(self, rows: Sequence[Any], first_index: int = 0) -> TokenizedExamples:
        """Tokenize many rows at once; RowProblem carries the failing row's index."""
        if type(self).tokenize_row is not PromptFormat.tokenize_row:
            examples = self._per_row(rows, first_index)
        else:
            examples = self._batched_segments(rows, first_index)
        if len(examples):  # nothing before the first token predicts it
            examples.labels[examples.offsets[:-1][examples.lengths > 0]] = IGNORE_INDEX
        return examples

    def _per_row(self, rows, first_index: int) -> TokenizedExamples:
        input_ids, labels = [], []
        for index, row in enumerate(rows, first_index):
            try:
                out = self.tokenize_row(row)
                input_ids.append(out["input_ids"])
                labels.append(out["labels"])
            except RowProblem as problem:
                raise RowProblem(problem.message, index) from None
            except (KeyError, TypeError, IndexError) as exc:
                raise RowProblem(f"{type(exc).__name__}: {exc}", index) from exc
        try:
            examples = TokenizedExamples.from_lists(input_ids, labels)
        except RowProblem as problem:
            raise RowProblem(problem.message, first_index + (problem.row or 0)) from None
        return examples

    def _batched_segments(self, rows, first_index: int) -> TokenizedExamples:
        texts: list[str] = []
        pieces: list[Sequence[int] | None] = []  # literal ids, or None for the next text of `texts`
        trained: list[bool] = []
        counts: list[int] = []
        for index, row in enumerate(rows, first_index):
            try:
                segments = self.segments(row)
            except RowProblem as problem:
                raise RowProblem(problem.message, index) from None
            except (KeyError, TypeError, IndexError) as exc:
                raise RowProblem(f"{type(exc).__name__}: {exc}", index) from exc
            counts.append(len(segments))
            for piece, is_trained in segments:
                if isinstance(piece, str):
                    pieces.append(None)
                    texts.append(piece)
                elif isinstance(piece, list | tuple):
                    pieces.append(piece)
                else:
                    raise RowProblem(
                        f"a segment is text or a list of token ids, not {type(piece).__name__}", index
                    )
                trained.append(is_trained)
        encoded = iter(encode_texts(self.tokenizer, texts))
        segment_ids = [next(encoded) if piece is None else piece for piece in pieces]
        return self._assemble(segment_ids, trained, counts)

    def _assemble(self, segment_ids, trained, counts) -> TokenizedExamples:
        """Examples from their segments' ids: row k is the next counts[k] segments."""
        import pyarrow as pa

        array = pa.array(segment_ids, type=pa.list_(pa.int32()))
        segment_offsets = array.offsets.to_numpy().astype(np.int64)
        input_ids = array.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        flags = np.asarray(trained, dtype=bool) | self.train_on_inputs
        labels = np.where(np.repeat(flags, np.diff(segment_offsets)), input_ids, np.int32(IGNORE_INDEX))
        boundaries = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=boundaries[1:])
        return TokenizedExamples(input_ids, labels, segment_offsets[boundaries])
