"""`kubetune generate CONFIG --prompt TEXT`: print a sample from the trained result."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the training config of the run to sample from")
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML", help="overlay (repeatable)")
    parser.add_argument("--prompt", required=True, help="the instruction or message")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument(
        "--template",
        choices=("auto", "alpaca", "chat", "raw"),
        default="auto",
        help="prompt format; auto follows datasets[0].type",
    )


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.train.commands.train import setup_logging
    from kubetune.train.errors import EXIT_BAD_INPUT, UserError

    setup_logging()
    try:
        cfg = load_config(args.config, overlays=args.overlay)
        from kubetune.train.generate import generate

        text = generate(
            cfg,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            template=args.template,
            temperature=args.temperature,
        )
    except UserError as err:  # before ConfigError, which it is: its report names the action refused
        print(err.report("generate"), file=sys.stderr)
        return err.exit_code
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(text)
    return 0
