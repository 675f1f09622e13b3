"""`kubetune validate CONFIG... [--overlay FILE]... [--format text|json]`: static checks, no network.

Exit status 0 when every config is valid, 2 when any is not.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML config file(s) to check")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML merged onto each config before checking (top-level keys replace); repeatable, in order",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format (default text)"
    )


def run(args: argparse.Namespace) -> int:
    from kubetune.config.loading import compose
    from kubetune.config.problems import format_report
    from kubetune.config.validation import check

    results = []
    for config in args.configs:
        document, problems, source_dir, _ = compose(config, overlays=args.overlay)
        if document is not None or not problems:
            problems = problems + check(document, source_dir=source_dir)[0]
        results.append((config, problems))

    if args.format == "json":
        payload = {
            "valid": all(not problems for _, problems in results),
            "configs": [
                {
                    "config": config,
                    "overlays": list(args.overlay),
                    "valid": not problems,
                    "problems": [p.to_dict() for p in problems],
                }
                for config, problems in results
            ],
        }
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        suffix = "".join(f" + {overlay}" for overlay in args.overlay)
        for config, problems in results:
            if problems:
                print(format_report(problems, source=config + suffix))
            else:
                print(f"{config}{suffix}: valid")
    return 0 if all(not problems for _, problems in results) else 2
