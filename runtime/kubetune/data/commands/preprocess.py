"""`kubetune preprocess CONFIG [--overlay FILE]...`: tokenize, mask and pack the datasets once.

The result lands in dataset_prepared_path under a hash of data + tokenizer + token-affecting
keys; `kubetune train` with the same inputs finds it there and skips tokenization.
Exit status 0 when prepared (or already there), 2 when the config or the data is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML training config")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML merged onto the config (top-level keys replace); repeatable, in order",
    )
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.data import DataError, load_tokenizer, prepare_datasets

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overlays=args.overlay)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        tokenizer = load_tokenizer(cfg)
    except OSError as exc:  # not a model directory, or a hub id that cannot be reached
        print(
            f"{args.config}: cannot load the tokenizer: {exc}\n"
            "    fix: point base_model (or tokenizer_config) at a local model directory",
            file=sys.stderr,
        )
        return 2
    try:
        data = prepare_datasets(cfg, tokenizer)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"path": str(data.path), **data.stats}, indent=2, sort_keys=True))
    else:
        stats = data.stats
        efficiency = stats.get("packing_efficiency")
        print(f"prepared {data.path}")
        print(
            f"  train: {stats['examples']} examples, {stats['tokens']} tokens "
            f"({stats['trained_tokens']} trained) in {stats['packed_rows']} rows"
            + (f", packing efficiency {efficiency:.1%}" if efficiency is not None else "")
        )
        if "eval" in stats:
            print(f"  eval: {stats['eval']['examples']} examples in {stats['eval']['packed_rows']} rows")
        dropped = sum(stats.get(k, 0) for k in ("dropped_too_long", "dropped_untrained", "dropped_too_short"))
        if dropped:
            print(
                f"  dropped: {stats['dropped_too_long']} longer than sequence_len, "
                f"{stats['dropped_untrained']} with nothing to train"
                + (
                    f", {stats['dropped_too_short']} shorter than min_sample_len"
                    if stats.get("dropped_too_short")
                    else ""
                )
            )
    return 0
