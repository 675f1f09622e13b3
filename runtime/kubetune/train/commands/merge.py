"""`kubetune merge CONFIG [--output DIR]`: a standalone model from the base model and the trained adapter."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the training config of the run whose adapter to merge")
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML", help="overlay (repeatable)")
    parser.add_argument(
        "--output", metavar="DIR", help="where to write the merged model (default: <output_dir>/merged)"
    )


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.train.commands.train import setup_logging
    from kubetune.train.errors import EXIT_BAD_INPUT, UserError

    setup_logging()
    try:
        cfg = load_config(args.config, overlays=args.overlay)
        from kubetune.train.merge import merge

        target = merge(cfg, args.output)
    except UserError as err:  # before ConfigError, which it is: its report names the action refused
        print(err.report("merge"), file=sys.stderr)
        return err.exit_code
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(target)
    return 0
