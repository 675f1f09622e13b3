"""kubetune.data: rows -> formats -> tokens + labels -> packing -> cache.

Importing this package costs numpy only; datasets, pyarrow, transformers and torch are imported
by the functions that need them.
"""

from kubetune.data.collator import PackedCollator, block_causal_mask
from kubetune.data.errors import DataError
from kubetune.data.formats import IGNORE_INDEX, PromptFormat, TokenizedExamples
from kubetune.data.packing import pack_lengths, packing_efficiency
from kubetune.data.pipeline import PreparedData, build_prepared, preparation_key, prepare_datasets
from kubetune.data.tokenizer import load_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "PackedCollator",
    "PreparedData",
    "PromptFormat",
    "TokenizedExamples",
    "block_causal_mask",
    "build_prepared",
    "load_tokenizer",
    "pack_lengths",
    "packing_efficiency",
    "preparation_key",
    "prepare_datasets",
]
