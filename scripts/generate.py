#!/usr/bin/env python3
"""Write every generated file of the repository, or check that none is stale.

    python scripts/generate.py          # rewrite generated files
    python scripts/generate.py --check  # exit 1 and list stale files (a test runs this)

A generator is a function returning the file's full text; each is listed once in GENERATED.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
from collections import Counter
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


AXOLOTL_RESULTS = "bench/results/axolotl_examples.jsonl"


def _key_of(problem_path: str) -> str:
    """`datasets[0].type` -> `datasets[].type`: the key as the results count it."""
    return re.sub(r"\[\d+\]", "[]", problem_path)


def axolotl_refusals_markdown(results: Path) -> str:
    """docs/config.md's closing section: every key that still refuses one of Axolotl's example configs,
    with the files it refuses and the reason kubetune gives, from the committed benchmark results
    (`bench/axolotl_examples.py`), so the counts in the docs are the measured ones."""
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    text_only = [row for row in rows if not row["multimodal"] and not row["rl"]]
    every: Counter[str] = Counter()
    text: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    reason: dict[str, str] = {}
    for row in rows:
        for key in row["refused"]:
            every[key] += 1
        for problem in row["problems"]:
            reason.setdefault(_key_of(problem["path"]), problem["fix"])
    for row in text_only:
        keys = set(row["refused"])
        text.update(keys)
        if len(keys) == 1:
            alone.update(keys)
    accepted = sum(row["accepted"] for row in text_only)
    out = [
        "",
        "## Axolotl's example configs still refused",
        "",
        f"Measured by `bench/axolotl_examples.py` over Axolotl's `examples/` (results: `{AXOLOTL_RESULTS}`):",
        f"{sum(row['accepted'] for row in rows)} of {len(rows)} files accepted; of the {len(text_only)} text-only,",
        f"non-RL ones {accepted} ({100 * accepted / len(text_only):.1f}%). Every key that still refuses a file, with",
        "the files it refuses (text-only non-RL / of those, refused for this key alone / all files) and what",
        "kubetune says to do instead:",
        "",
        "| key | text-only non-RL | alone | all | instead |",
        "|---|---|---|---|---|",
    ]
    for key, count in sorted(every.items(), key=lambda item: (-text[item[0]], -item[1], item[0])):
        fix = reason.get(key, "").replace("|", "\\|")
        out.append(f"| `{key}` | {text[key]} | {alone[key]} | {count} | {fix} |")
    return "\n".join(out) + "\n"


def _config_reference() -> str:
    from kubetune.config.docs import render_markdown

    return render_markdown() + axolotl_refusals_markdown(REPO / AXOLOTL_RESULTS)


# output path (relative to the repo) -> producer of its text
GENERATED: dict[str, Callable[[], str]] = {
    "docs/config.md": _config_reference,
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
