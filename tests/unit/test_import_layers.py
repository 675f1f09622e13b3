"""The import boundaries docs/internals.md states, checked on every import in the source (lazy ones too).

- the operator imports kubetune.config and nothing else of the runtime (it runs no training code);
- kubetune.config imports no torch and no other heavy library (the operator imports it to validate);
- kubetune.data never imports kubetune.train (data feeds train, not the other way round).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "deepspeed", "bitsandbytes")


def imports(package: Path) -> list[tuple[str, int, str]]:
    """(file, line, imported module) for every import statement under `package`, at any depth."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(REPO)), node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((str(path.relative_to(REPO)), node.lineno, node.module))
    return found


def offending(package: Path, forbidden) -> list[str]:
    return [f"{file}:{line} imports {module}" for file, line, module in imports(package) if forbidden(module)]


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(
    ("package", "rule", "forbidden"),
    [
        (
            "operator/kubetune_operator",
            "the operator imports kubetune.config only",
            lambda m: (
                (top(m) == "kubetune" and not (m == "kubetune" or m.startswith("kubetune.config")))
                or top(m) in HEAVY
            ),
        ),
        ("runtime/kubetune/config", "kubetune.config imports no heavy library", lambda m: top(m) in HEAVY),
        (
            "runtime/kubetune/config",
            "kubetune.config imports no other runtime package",
            lambda m: top(m) == "kubetune" and m != "kubetune" and not m.startswith("kubetune.config"),
        ),
        (
            "runtime/kubetune/data",
            "kubetune.data never imports kubetune.train",
            lambda m: m.startswith("kubetune.train"),
        ),
    ],
)
def test_import_boundaries(package, rule, forbidden):
    assert offending(REPO / package, forbidden) == [], rule


def test_the_check_sees_lazy_imports():
    # A boundary crossed inside a function is still crossed: the walk must find such imports.
    found = {module for _, _, module in imports(REPO / "runtime" / "kubetune" / "train" / "commands")}
    assert "kubetune.train" in found or any(m.startswith("kubetune.train.") for m in found)


# The walk above reads this project's import statements; a third-party library that pulls torch in, or a
# name imported through importlib, only shows when the modules are really imported. So each layer's every
# module (`__main__` aside: importing it runs the program) is imported in a fresh interpreter, and what
# ended up in sys.modules is judged.
LOADED_AFTER_IMPORTING = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_importing(*packages: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER_IMPORTING, *packages],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("packages", "rule", "forbidden"),
    [
        (
            ("kubetune_operator",),
            "importing the operator loads kubetune.config only of the runtime, and no heavy library",
            lambda m: (
                (top(m) == "kubetune" and m != "kubetune" and not m.startswith("kubetune.config"))
                or top(m) in HEAVY
            ),
        ),
        (("kubetune.config",), "importing kubetune.config loads no heavy library", lambda m: top(m) in HEAVY),
        (
            ("kubetune.data",),
            "importing kubetune.data loads no kubetune.train",
            lambda m: m.startswith("kubetune.train"),
        ),
    ],
)
def test_import_boundaries_hold_when_imported(packages, rule, forbidden):
    assert [m for m in loaded_after_importing(*packages) if forbidden(m)] == [], rule
