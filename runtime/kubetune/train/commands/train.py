"""`kubetune train CONFIG`: run a fine-tune (single process, or in every process under torchrun)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (Axolotl-style YAML)")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="YAML",
        help="overlay merged onto the config (top-level keys replace); repeatable",
    )


def setup_logging() -> None:
    """INFO from rank 0, warnings only from the other ranks; JSON progress lines go to stdout."""
    rank = int(os.environ.get("RANK", 0))
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.train.errors import EXIT_BAD_INPUT

    setup_logging()
    try:
        cfg = load_config(args.config, overlays=args.overlay)
    except ConfigError as err:
        if int(os.environ.get("RANK", 0)) == 0:
            print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    from kubetune.train import run as train

    return train(cfg)
