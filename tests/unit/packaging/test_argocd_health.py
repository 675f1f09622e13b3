"""The ArgoCD health check (helm/kubetune/argocd-health.lua) run by a real Lua 5.1 interpreter.

ArgoCD runs health checks in gopher-lua, a Lua 5.1 implementation, with the object as the global
`obj`; the script returns {status, message}. The cases are in ArgoCD's own layout
(argocd/health_test.yaml + testdata/), so the check could be proposed upstream as it is.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.packaging.helm import CHART

HERE = Path(__file__).resolve().parent / "argocd"
SCRIPT = CHART / "argocd-health.lua"
CASES = yaml.safe_load((HERE / "health_test.yaml").read_text())["tests"]


@pytest.fixture(scope="module")
def lua() -> str:
    found = shutil.which("lua5.1")
    if found is None:
        pytest.fail(
            "lua5.1 is not installed: apt-get install -y lua5.1 (ArgoCD runs health checks as Lua 5.1)"
        )
    return found


def lua_literal(value) -> str:
    """A Python value (from YAML) as a Lua table constructor / literal."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, (dt.date, dt.datetime)):
        value = value.isoformat()
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def health(lua: str, obj: dict) -> dict[str, str]:
    # Like ArgoCD: the object is the global `obj`, the script's return value is the health.
    harness = (
        f"obj = {lua_literal(obj)}\n"
        f"local check = assert(loadfile({lua_literal(str(SCRIPT))}))\n"
        "local hs = check()\n"
        'io.write(tostring(hs.status), "\\n", tostring(hs.message), "\\n")\n'
    )
    p = subprocess.run([lua, "-"], input=harness, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    status, message = p.stdout.split("\n")[:2]
    return {"status": status, "message": message}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(lua, case):
    obj = yaml.safe_load((HERE / case["inputPath"]).read_text())
    assert health(lua, obj) == case["healthStatus"]


def test_every_fixture_has_a_case():
    used = {Path(c["inputPath"]).name for c in CASES}
    assert used == {p.name for p in (HERE / "testdata").glob("*.yaml")}


def test_covers_every_phase_and_health():
    phases = {
        (yaml.safe_load((HERE / c["inputPath"]).read_text()).get("status") or {}).get("phase") for c in CASES
    }
    assert {"Pending", "Running", "Succeeded", "Failed", "Suspended", None} <= phases
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Degraded", "Suspended", "Progressing"}


def test_the_interpreter_is_lua_5_1(lua):
    p = subprocess.run([lua, "-v"], capture_output=True, text=True, timeout=30)
    assert "Lua 5.1" in (p.stdout + p.stderr)


def test_readme_carries_the_same_check():
    """The README's argocd-cm snippet is the shipped script, indented under the key."""
    readme = (CHART / "README.md").read_text()
    script = SCRIPT.read_text()
    indented = "\n".join(("    " + line) if line else "" for line in script.splitlines())
    assert indented in readme
