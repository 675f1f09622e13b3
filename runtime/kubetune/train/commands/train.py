"""`kubetune train CONFIG`: run a fine-tune (single process, or in every process under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from kubetune.console import add_log_format_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (Axolotl-style YAML)")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="YAML",
        help="overlay merged onto the config (top-level keys replace); repeatable",
    )
    add_log_format_argument(parser)


def setup_logging(log_format: str | None = None) -> str:
    """INFO from rank 0, warnings only from the other ranks, in the chosen --log-format (kubetune.console).

    The choice is exported for the progress reporters that the training loop builds.
    """
    from kubetune.console import setup_console

    return setup_console(log_format, export=True)


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.train.errors import EXIT_BAD_INPUT

    setup_logging(args.log_format)
    try:
        cfg = load_config(args.config, overlays=args.overlay)
    except ConfigError as err:
        if int(os.environ.get("RANK", 0)) == 0:
            print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    from kubetune.train import run as train

    return train(cfg)
