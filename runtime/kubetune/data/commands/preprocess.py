"""`kubetune preprocess CONFIG [--overlay FILE]...`: tokenize, mask and pack the datasets once.

The result lands in dataset_prepared_path under a hash of data + tokenizer + token-affecting
keys; `kubetune train` with the same inputs finds it there and skips tokenization.
Exit status 0 when prepared (or already there), 2 when the config or the data is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys

from kubetune.console import add_log_format_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML training config")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML merged onto the config (top-level keys replace); repeatable, in order",
    )
    parser.add_argument("--json", action="store_true", help="the same as --log-format json")
    add_log_format_argument(parser)


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.console import phase, setup_console
    from kubetune.data import DataError, load_tokenizer, prepare_datasets

    fmt = setup_console("json" if args.json else args.log_format)
    try:
        cfg = load_config(args.config, overlays=args.overlay)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if cfg.skip_prepare_dataset:
        print(
            f"{args.config}: skip_prepare_dataset: true: the run prepares its data in memory and never reads "
            "the prepared-dataset cache that preprocess writes\n"
            "    fix: remove skip_prepare_dataset (the run then reuses what preprocess prepares), or train "
            "without running preprocess",
            file=sys.stderr,
        )
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
        with phase(
            fmt, f"tokenizing and packing {len(cfg.datasets or cfg.pretraining_dataset or ())} dataset(s)"
        ):
            data = prepare_datasets(cfg, tokenizer)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 2
    if fmt == "json":
        print(json.dumps({"path": str(data.path), **data.stats}, indent=2, sort_keys=True))
    else:
        print("\n".join(summary_lines(str(data.path), data.stats)))
    return 0


def summary_lines(path: str, stats: dict) -> list[str]:
    """The readable summary printed by `plain` and on a terminal."""
    efficiency = stats.get("packing_efficiency")
    lines = [
        f"prepared {path}",
        f"  train: {stats['examples']} examples, {stats['tokens']} tokens "
        f"({stats['trained_tokens']} trained) in {stats['packed_rows']} rows"
        + (f", packing efficiency {efficiency:.1%}" if efficiency is not None else ""),
    ]
    if "eval" in stats:
        lines.append(f"  eval: {stats['eval']['examples']} examples in {stats['eval']['packed_rows']} rows")
    if sum(stats.get(k, 0) for k in ("dropped_too_long", "dropped_untrained", "dropped_too_short")):
        lines.append(
            f"  dropped: {stats['dropped_too_long']} longer than sequence_len, "
            f"{stats['dropped_untrained']} with nothing to train"
            + (
                f", {stats['dropped_too_short']} shorter than min_sample_len"
                if stats.get("dropped_too_short")
                else ""
            )
        )
    return lines
