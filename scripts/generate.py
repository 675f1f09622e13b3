#!/usr/bin/env python3
"""Write every generated file of the repository, or check that none is stale.

    python scripts/generate.py          # rewrite generated files
    python scripts/generate.py --check  # exit 1 and list stale files (a test runs this)

A generator is a function returning the file's full text; each is listed once in GENERATED.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _call(spec: str) -> Callable[[], str]:
    module_name, _, attr = spec.partition(":")
    return lambda: getattr(importlib.import_module(module_name), attr)()


def _copy_of(relative: str) -> Callable[[], str]:
    return lambda: _render(relative)


def _render(relative: str) -> str:
    return GENERATED[relative]()


# output path (relative to the repo) -> producer of its text
GENERATED: dict[str, Callable[[], str]] = {
    "docs/config.md": _call("kubetune.config.docs:render_markdown"),
    "crds/finetunejob.yaml": _call("kubetune_operator.crd:render_crd_yaml"),
    # The Helm chart's copies (rendered by helm/kubetune/templates/crds/).
    "helm/kubetune/files/crds/finetunejob.yaml": _copy_of("crds/finetunejob.yaml"),
    "helm/kubetune/files/crds/kopf-peering.yaml": _call("kubetune_operator.crd:render_peering_crd_yaml"),
}


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def stale_files() -> list[str]:
    stale = []
    for relative, produce in GENERATED.items():
        path = REPO / relative
        if not path.exists() or path.read_text(encoding="utf-8") != produce():
            stale.append(relative)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        for relative in stale:
            print(f"stale: {relative} (run: python scripts/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for relative, produce in GENERATED.items():
        _write_atomically(REPO / relative, produce())
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
