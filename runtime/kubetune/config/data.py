"""Top-level data keys: which datasets, how they are split, tokenized and packed."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BeforeValidator, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from .base import Section, field
from .datasets import DatasetConfig
from .sources import check_object_store_uri


def _invalid(kind: str, what: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError(kind, "expected {what}", {"what": what, "fix": fix})


def _number(value: object, what: str, fix: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _invalid("number_type", what, fix)
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eEnN") else int(value)
        except ValueError:
            raise _invalid("number_parsing", what, fix) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid("number_finite", what, fix)
    return value


def _val_set_size(value: object) -> float | int:
    what = "a fraction in [0, 1) or a whole number of examples"
    fix = "write e.g. `val_set_size: 0.05` (5% of the examples) or `val_set_size: 500` (500 examples)"
    number = _number(value, what, fix)
    if (isinstance(number, int) and number >= 0) or (isinstance(number, float) and 0 <= number < 1):
        return number
    raise _invalid("val_set_size", what, fix)


def steps_or_fraction(value: object) -> float | int:
    """A step interval: a whole number >= 1, or a float in (0, 1) meaning that fraction of the total steps."""
    what = "a whole number of steps >= 1 or a fraction of the total steps in (0, 1)"
    fix = "write e.g. 100 (every 100 steps) or 0.25 (every quarter of the training)"
    number = _number(value, what, fix)
    if isinstance(number, float) and number.is_integer() and number >= 1:
        number = int(number)
    if (isinstance(number, int) and number >= 1) or (isinstance(number, float) and 0 < number < 1):
        return number
    raise _invalid("step_interval", what, fix)


ValSetSize = Annotated[
    float | int,
    BeforeValidator(_val_set_size),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
StepInterval = Annotated[
    float | int,
    BeforeValidator(steps_or_fraction),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]


class PretrainingDatasetConfig(Section):
    """One entry of `pretraining_dataset`: raw text read as a stream."""

    path: str = field(
        description="Hub dataset id, a local file or directory, or an object-store URI (`s3://`, `gs://`, "
        "`az://`: downloaded once into the source cache, then read as a stream from there).",
        min_length=1,
    )
    name: str | None = field(None, description="Dataset configuration name (the hub dataset's subset).")
    split: str = field("train", description="Split to read.")
    data_files: str | list[str] | None = field(None, description="File(s) inside `path` to read.")
    ds_type: Literal["json", "jsonl", "parquet", "csv", "arrow", "text"] | None = field(
        None, description="File format of local data when the file extension does not say it."
    )
    revision: str | None = field(None, description="Hub revision of the dataset.")
    type: Literal["pretrain", "completion"] | None = field(
        None, description="`pretrain` (Axolotl's name) or `completion`: the same here. Default: pretrain."
    )
    text_column: str | None = field(None, description="Column holding the text. Default: `text`.")

    @field_validator("path", mode="before")
    @classmethod
    def _known_scheme(cls, value: object) -> object:
        return check_object_store_uri(value, what="path", required=False)


class DataKeys(Section):
    """Data"""

    datasets: list[DatasetConfig] | None = field(
        None,
        description="Training datasets (this or `pretraining_dataset` is required); each entry is a mapping, "
        "see [Dataset entries](#dataset-entries). Their rows are concatenated and shuffled by `seed`.",
        min_length=1,
    )
    pretraining_dataset: list[PretrainingDatasetConfig] | None = field(
        None,
        description="Raw-text corpora read as streams (a hub corpus is never downloaded whole): documents are "
        "read in order, each tokenized as bos + text + eos and cut into `sequence_len` pieces, all trained, "
        "until the run's `max_steps` (required) have enough tokens; those are then prepared, shuffled by "
        "`seed` and packed like any dataset. Instead of `datasets`.",
        min_length=1,
    )
    test_datasets: list[DatasetConfig] | None = field(
        None,
        description="Evaluation datasets (same entry shape). Mutually exclusive with a `val_set_size` above 0.",
        min_length=1,
    )
    dataset_prepared_path: str | None = field(
        None,
        description="Directory for the tokenized, packed dataset cache, keyed by a hash of the data, "
        "tokenizer and token-affecting keys (rank 0 prepares, the other ranks wait and reuse it). "
        "Relative paths resolve against the config's directory. Default: `<output_dir>/prepared`.",
    )
    skip_prepare_dataset: bool = field(
        False,
        description="Prepare the datasets in memory in the training process, without the prepared-dataset "
        "cache: nothing is written to or read from `dataset_prepared_path`, and every rank tokenizes the data "
        "itself (the same examples, in the same order, as the cached path gives). For data that is cheap to "
        "tokenize, or storage the ranks do not share. Not with `kubetune preprocess` (which writes the cache) "
        "nor `precompute_ref_log_probs` (kept in the cache). Default: false.",
    )
    val_set_size: ValSetSize = field(
        0,
        description="Held-out evaluation split taken from the training data: a fraction in [0, 1) or a "
        "whole number of examples. Deterministic for a given `seed`. Default: 0 (no split).",
    )
    seed: int = field(42, description="Random seed for shuffling, the validation split and initialisation.")
    sequence_len: int = field(
        512,
        description="Maximum tokens per training row. With `sample_packing` it is the packing bin size, "
        "and it must then be set explicitly. Default: 512.",
        ge=1,
    )
    min_sample_len: int | None = field(
        None,
        description="Drop examples of fewer tokens than this (counted after tokenization, like "
        "`sequence_len`). Default: keep every example with something to train.",
        ge=1,
    )
    dataset_exact_deduplication: bool | None = field(
        None,
        description="Drop examples whose tokens and labels equal another's, before `val_set_size` splits "
        "off evaluation examples; with `test_datasets`, evaluation examples equal to a training example are "
        "dropped too. Default: keep duplicates.",
    )
    dataset_num_proc: int | None = field(
        None,
        description="Processes that tokenize a dataset of 8192 rows or more (forked, each single-threaded; "
        "the result does not depend on it). Default: the CPUs available, at most 8.",
        ge=1,
    )
    sample_packing: bool = field(
        False,
        description="Pack several examples into each `sequence_len` row. Position ids restart per example and "
        "example boundaries travel with the batch, so attention never crosses examples.",
    )
    eval_sample_packing: bool | None = field(
        None, description="Pack evaluation rows too. Default: same as `sample_packing`."
    )
    pad_to_sequence_len: bool = field(
        False, description="Pad every batch to `sequence_len` tokens (steady memory use and shapes)."
    )
    group_by_length: bool = field(
        False,
        description="Batches of rows of similar length, as transformers' `LengthGroupedSampler` (its "
        "`get_length_grouped_indices`): each epoch's seeded permutation is cut into megabatches of up to 50 "
        "optimizer steps' rows, each sorted longest first (the longest row of the epoch leads), so a "
        "micro-batch pads less. Unpacked rows only: not with `sample_packing` or `pad_to_sequence_len` (every "
        "row has the same width there).",
    )
    train_on_inputs: bool = field(
        False,
        description="Train on the prompt tokens as well. Default false: only response tokens carry labels.",
    )
    streaming: bool = field(
        False,
        description="Read `datasets` as streams (`datasets` streaming: a hub dataset is never downloaded or "
        "tokenized whole): each entry's rows are tokenized in batches, entry after entry, until the "
        "examples kept cover `max_steps` (required) optimizer steps (rows of `sequence_len` tokens with "
        "`sample_packing`, one example each without); those are then prepared like any dataset (evaluation "
        "split, shuffle by `seed`, packing). `test_datasets` are read whole. `pretraining_dataset` is always "
        "streamed. Default: false.",
    )
    streaming_multipack_buffer_size: int | None = field(
        None,
        description="Read a stream (`streaming: true` or `pretraining_dataset`) through a shuffle buffer of "
        "this many rows drawn by `seed` (`datasets.IterableDataset.shuffle`), as Axolotl shuffles its "
        "streams; which rows are read first then varies with the seed. The rows read are packed together "
        "as one set (not buffer by buffer). Default: the stream's own order.",
        ge=1,
    )
