"""The `kubetune` command line.

Each subcommand lives in the package that owns it, as a module exposing
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `kubetune validate` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("kubetune.config.commands.validate", "check configs statically (exit 0 valid, 2 invalid)"),
    "schema": ("kubetune.config.commands.schema", "print the JSON schema of the training config"),
    "preprocess": (
        "kubetune.data.commands.preprocess",
        "tokenize and pack the datasets into dataset_prepared_path",
    ),
    "fetch": (
        "kubetune.sources.command",
        "download the config's hub models and datasets once into the cache (then train with HF_HUB_OFFLINE=1)",
    ),
    "train": ("kubetune.train.commands.train", "run a fine-tune (single process or under torchrun)"),
    "launch": (
        "kubetune.train.commands.launch",
        "torchrun, with KUBETUNE_WORKER_STOP_TIMEOUT seconds for workers to stop after SIGTERM (not 30)",
    ),
    "merge": ("kubetune.train.commands.merge", "merge a trained adapter into a standalone model"),
    "generate": ("kubetune.train.commands.generate", "sample text from the trained result"),
}


def build_parser() -> argparse.ArgumentParser:
    from kubetune import __version__

    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Argument definitions are cheap; the heavy imports happen inside run().
        importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after `launch` is torchrun's, its options included (argparse would claim them).
        from kubetune.train.commands import launch

        return launch.launch(argv[1:])
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
