#!/usr/bin/env python3
"""Axolotl's own example configs through kubetune's validation: which are accepted, and what refuses the rest.

    .venv/bin/python bench/axolotl_examples.py PATH_TO_AXOLOTL_CHECKOUT [--output FILE] [--source-dir root|file]

Every `*.yml` / `*.yaml` under `<checkout>/examples/` is read and validated exactly as `kubetune validate`
does (kubetune.config's compose + check: static checks, no network, no Axolotl code). One JSON line per
file goes to bench/results/axolotl_examples.jsonl (or --output):

    {"path": "examples/llama-3/lora-1b.yml", "accepted": false, "refused": {"plugins": ["LigerPlugin"]},
     "multimodal": false, "rl": false, "problems": [{"path": ..., "message": ..., "fix": ...}]}

`refused` maps each refused key (list indices folded: `datasets[].type`) to the values the file gives it
(each entry of a list, e.g. of `plugins`, on its own; class paths by their last name);
`multimodal` is a set `processor_type`, `rl` a set `rl`. The table printed at the end counts the files
refused per key (a file counts once per key, and for several keys when several refuse it) with the
commonest values, then the accepted counts: overall and for the text-only, non-RL files.

Where relative paths resolve (--source-dir): Axolotl's examples are run from the checkout's root
(`axolotl train examples/llama-3/lora-1b.yml`), and Axolotl resolves relative paths in them, such as
`deepspeed: deepspeed_configs/zero3.json`, against that working directory. By default (`root`) each
file is therefore validated with the checkout root as its source directory, i.e. as the user who runs
Axolotl's examples from the checkout would see it. `file` validates against each file's own directory
instead, which is what `kubetune validate examples/x/y.yml` does; the two differ only for relative
paths (kubetune's own ZeRO presets stand in for `deepspeed_configs/<name>.json` when no such file
exists, so the deepspeed examples resolve either way).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))

from kubetune.config.loading import compose  # noqa: E402
from kubetune.config.validation import check  # noqa: E402

RESULTS = REPO / "bench" / "results" / "axolotl_examples.jsonl"
_INDEX = re.compile(r"\[\d+\]")


def example_files(checkout: Path) -> list[Path]:
    root = checkout / "examples"
    return sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def _set(document: object, key: str) -> bool:
    if not isinstance(document, Mapping):
        return False
    value = document.get(key)
    return value not in (None, False, "", [], {})


def _value_at(document: object, path: str) -> object:
    """The raw value at a problem path such as `datasets[0].type` (None when it is not there)."""
    current = document
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            current = current[index] if isinstance(current, list) and index < len(current) else None
        elif isinstance(current, Mapping):
            # fsdp_config keys may be written without their prefix (the problem names the prefixed one)
            found = current.get(part)
            current = current.get(part.removeprefix("fsdp_")) if found is None else found
        else:
            current = None
        if current is None:
            return None
    return current


def _class_path(item: object) -> bool:
    return isinstance(item, str) and item.startswith("axolotl.")


def _values(value: object) -> list[str]:
    """A list's entries one by one (class paths such as plugins by their last name), a scalar itself."""
    if isinstance(value, list):
        return [_short(item.rpartition(".")[2] if _class_path(item) else item) for item in value]
    return [_short(value)]


def _short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_file(path: Path, checkout: Path, source_dir_mode: str) -> dict:
    document, problems, file_dir, _ = compose(path)
    source_dir = checkout if source_dir_mode == "root" else file_dir
    if document is not None or not problems:
        problems = problems + check(document, source_dir=source_dir)[0]
    refused: dict[str, list[str]] = {}
    for problem in problems:
        key = _INDEX.sub("[]", problem.path) or "(file)"
        values = refused.setdefault(key, [])
        values += [v for v in _values(_value_at(document, problem.path)) if v not in values]
    return {
        "path": path.relative_to(checkout).as_posix(),
        "accepted": not problems,
        "refused": refused,
        "multimodal": _set(document, "processor_type"),
        "rl": _set(document, "rl"),
        "problems": [p.to_dict() for p in problems],
    }


def table(rows: list[dict]) -> str:
    per_key: Counter[str] = Counter()
    values: dict[str, Counter[str]] = {}
    for row in rows:
        for key, refused_values in row["refused"].items():
            per_key[key] += 1
            values.setdefault(key, Counter()).update(refused_values)
    lines = ["files refused per key (a file counts once per key that refuses it):"]
    for key, count in per_key.most_common():
        common = ", ".join(f"{v} {n}" for v, n in values[key].most_common(6))
        lines.append(f"  {count:4d}  {key}  ({common})")
    text_rows = [r for r in rows if not r["multimodal"] and not r["rl"]]
    accepted = sum(r["accepted"] for r in rows)
    text_accepted = sum(r["accepted"] for r in text_rows)
    lines += [
        "",
        f"accepted overall: {accepted} of {len(rows)}",
        f"accepted text-only non-RL: {text_accepted} of {len(text_rows)} "
        f"({100 * text_accepted / max(1, len(text_rows)):.1f}%)",
        f"multimodal (processor_type): {sum(r['multimodal'] for r in rows)} files, "
        f"{sum(r['accepted'] for r in rows if r['multimodal'])} accepted; "
        f"rl: {sum(r['rl'] for r in rows)} files, {sum(r['accepted'] for r in rows if r['rl'])} accepted",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="an Axolotl checkout (its examples/ directory is read)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON lines file (default {RESULTS})")
    parser.add_argument(
        "--source-dir",
        choices=("root", "file"),
        default="root",
        help="resolve relative paths against the checkout root (as Axolotl runs them; default) or each file's dir",
    )
    args = parser.parse_args(argv)
    checkout = args.checkout.resolve()
    files = example_files(checkout)
    if not files:
        parser.error(f"no example configs under {checkout / 'examples'}")
    rows = [validate_file(path, checkout, args.source_dir) for path in files]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(table(rows))
    print(f"\n{len(rows)} results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
