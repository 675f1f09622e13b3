"""Rows of a datasets.Dataset through a format, in chunks, optionally in several processes.

The fast tokenizer already spreads one batched call over the cores, but the Python around it
(building prompts, assembling arrays) runs on one; meanwhile the tokenizer's threads wait. Several
forked processes, each tokenizing its own chunks single-threaded, keep every core busy; on 2 cores
this is measurably faster (bench/preprocess_throughput.py), and it is what makes chat templates and
row-by-row custom formats scale on many-core nodes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from typing import Any

from kubetune.data.errors import DataError, data_error
from kubetune.data.formats import PromptFormat, RowProblem, TokenizedExamples

CHUNK_ROWS = 8192  # rows per format call: large enough to amortise, small enough for memory
MIN_ROWS_PER_PROCESS = 4096  # below this a process costs more than it saves

# What forked workers read: set just before the pool forks, so rows and format are inherited
# (memory-mapped arrow, compiled templates) rather than pickled.
_WORK: tuple[Any, PromptFormat, str] | None = None


def tokenize_dataset(rows, fmt: PromptFormat, where: str, *, num_proc: int = 1) -> TokenizedExamples:
    """All rows through `fmt`; DataError naming `where` for missing columns or a bad row."""
    missing = [name for name in fmt.required_fields if name not in rows.column_names]
    if missing:
        raise data_error(
            where,
            f"the rows have no {', '.join(repr(m) for m in missing)} column (columns: {', '.join(rows.column_names)})",
            "map your column names with the format's field keys (field_instruction, field_input, "
            "field_output, field, field_messages, ...), or pick the type that matches the data",
        )
    processes = min(num_proc, len(rows) // MIN_ROWS_PER_PROCESS)
    if processes < 2 or sys.platform != "linux":  # fork is Linux's; elsewhere one process
        ranges = _ranges(len(rows), CHUNK_ROWS)
        return TokenizedExamples.concat([_tokenize_range(rows, fmt, where, r) for r in ranges])
    # Several chunks per process, so an unlucky slow chunk does not leave the others idle.
    ranges = _ranges(len(rows), min(CHUNK_ROWS, math.ceil(len(rows) / (processes * 4))))
    return TokenizedExamples.concat(_in_processes(rows, fmt, where, ranges, processes))


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _tokenize_range(rows, fmt: PromptFormat, where: str, span: tuple[int, int]) -> TokenizedExamples:
    start, end = span
    columns = rows[start:end]
    names = list(columns)
    batch = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    try:
        return fmt.tokenize_rows(batch, first_index=start)
    except RowProblem as problem:
        raise data_error(
            where, str(problem), "fix or remove that row (rows count from 0 in file order)"
        ) from None


def _in_processes(rows, fmt, where, ranges, processes) -> list[TokenizedExamples]:
    global _WORK
    _WORK = (rows, fmt, where)
    # Each worker tokenizes single-threaded (the processes are the parallelism); setting this
    # before the fork also keeps the tokenizers library from warning about forking after use.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_worker, ranges, chunksize=1)
    finally:
        _WORK = None
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    for result in results:
        if not isinstance(result, TokenizedExamples):  # problems travel as data: see _worker
            raise DataError(result)
    return results


def _worker(span: tuple[int, int]):
    assert _WORK is not None  # set by _in_processes before the fork
    rows, fmt, where = _WORK
    try:
        return _tokenize_range(rows, fmt, where, span)
    except DataError as error:
        # ConfigError does not survive pickling (its args are the report text): send the problems.
        return error.problems
