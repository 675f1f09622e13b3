"""The repository layout must never shadow the standard library."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_stdlib_operator_module_is_not_shadowed_from_repo_root():
    # Run from the repository root, where a stray operator/__init__.py would win the import.
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter(1)([0, 42]), operator.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    value, path = out.split()
    assert value == "42"
    assert not path.startswith(str(REPO / "operator"))


def test_operator_directory_is_not_a_package():
    assert not (REPO / "operator" / "__init__.py").exists()


def test_both_import_packages_resolve_to_the_repo():
    import kubetune
    import kubetune_operator

    assert pathlib.Path(kubetune.__file__).is_relative_to(REPO / "runtime")
    assert pathlib.Path(kubetune_operator.__file__).is_relative_to(REPO / "operator")
