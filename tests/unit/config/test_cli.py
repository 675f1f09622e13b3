"""`kubetune validate` / `kubetune schema` as a user runs them: exit codes and output (subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

from .conftest import BASE, OVERLAYS

REPO = Path(__file__).resolve().parents[3]


def kubetune(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubetune", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_validate_accepts_the_seed_config_and_its_qlora_overlay():
    result = kubetune("validate", BASE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("valid")
    result = kubetune("validate", BASE, "--overlay", OVERLAYS["mistral-qlora-fsdp"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_accepts_the_nd_parallel_overlay():
    result = kubetune("validate", BASE, "--overlay", OVERLAYS["nd-parallel"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("valid")


def test_validate_json_format_and_several_configs(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(BASE.read_text() + "optimiser: adamw_torch\n")
    result = kubetune("validate", BASE, bad, "--format", "json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    first, second = report["configs"]
    assert first["valid"] is True and first["problems"] == []
    assert second["valid"] is False
    (problem,) = second["problems"]
    assert (
        problem["path"] == "optimiser" and "did you mean 'optimizer'" in problem["message"] and problem["fix"]
    )


def test_validate_reports_yaml_errors_and_missing_files_cleanly(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("base_model: [unclosed\n")
    result = kubetune("validate", broken, tmp_path / "missing.yml")
    assert result.returncode == 2
    assert "YAML syntax error at line" in result.stdout and "not found" in result.stdout
    assert "Traceback" not in result.stderr


def test_schema_prints_the_json_schema_and_writes_a_file(tmp_path):
    result = kubetune("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object" and "base_model" in schema["properties"]
    out = tmp_path / "schema.json"
    assert kubetune("schema", "--output", out).returncode == 0
    assert json.loads(out.read_text()) == schema


def test_validate_never_imports_torch():
    code = (
        "import sys\n"
        "from kubetune.cli import main\n"
        f"rc = main(['validate', {str(BASE)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "print(rc, ','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0", result.stdout
