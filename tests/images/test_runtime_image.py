"""The runtime image (images/build.sh runtime, `make images-runtime`), run with runc: validate and a tiny train.

`make test` builds it first (the local cluster's pods run it; its cold build is minutes and gigabytes:
images/README.md); run alone, these tests run where the archive for the current inputs exists, and say so when
it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.oci import (
    BUILD,
    BUILD_INPUTS,
    FORBIDDEN,
    Image,
    pinned_setuptools,
    private_key_files,
    runc_run,
    wheel_generator,
)
from tests.paths import REPO

pytestmark = pytest.mark.slow
MAX_UNCOMPRESSED_BYTES = 6_000_000_000


@pytest.fixture(scope="module")
def image() -> Image:
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("running an image needs root and runc")
    archive = subprocess.run(
        [BUILD, "path", "runtime"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.exists(archive):
        pytest.skip("the runtime image is not built for these inputs: make images-runtime")
    return Image.open(Path(archive))


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime") / "rootfs"
    image.unpack(root)
    yield root
    shutil.rmtree(root)  # pytest keeps its last temporary directories; an unpacked image is too big to keep


def test_gpu_stack_imports_on_a_cpu_machine(image, rootfs, tmp_path):
    probe = (
        "import torch, bitsandbytes, liger_kernel, deepspeed, transformers, peft, kubetune.train; "
        "print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    )
    p = runc_run(rootfs, image, tmp_path / "imports", ["python", "-c", probe], timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    version, cuda, available = p.stdout.split()[-3:]
    assert cuda != "None" and available == "False", p.stdout


def test_validate_and_train_as_1000_on_a_read_only_root(image, rootfs, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "examples" / "tiny-lora.yml", work / "tiny-lora.yml")
    os.chown(work, 1000, 1000)
    os.chown(work / "tiny-lora.yml", 1000, 1000)

    def run_ok(step: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Runs `argv` in the image with the work directory at /work and asserts it exits 0."""
        p = runc_run(rootfs, image, tmp_path / step, argv, volumes={"/work": work}, timeout=timeout)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p

    run_ok("tiny", ["python", "-m", "kubetune.tiny", "/work/tiny"], timeout=600)
    run_ok("validate", ["kubetune", "validate", "/work/tiny-lora.yml"], timeout=600)
    p = run_ok("train", ["kubetune", "train", "/work/tiny-lora.yml"], timeout=900)
    # `kubetune train` writes one JSON event per line; the train events carry the loss.
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    losses = [e["loss"] for e in events if e.get("event") in ("train", "done") and "loss" in e]
    assert len(losses) >= 3 and losses[-1] < 0.75 * losses[0], (losses, p.stdout[-3000:])
    assert any((work / "tiny" / "out").iterdir())


def test_host_built_wheels_were_built_with_the_pinned_backend(rootfs):
    """images/build-constraints.txt reaches the image (reproducibility: not the newest setuptools on PyPI)."""
    for distribution in ("kubetune", "deepspeed"):
        assert wheel_generator(rootfs, distribution) == pinned_setuptools(), distribution


def test_labels_user_and_size(image):
    config = image.config["config"]
    assert config["User"] == "1000:1000"
    assert config["Labels"]["org.opencontainers.image.title"] == "kubetune-runtime"
    build = json.loads((image.archive.parent / "build.json").read_text())
    assert build["uncompressed_bytes"] <= MAX_UNCOMPRESSED_BYTES, build


def test_no_git_or_secrets_in_any_layer(image):
    """Every layer's file list, whiteouts included: a file a later layer hides (pip, in the deps layer) is
    still in the archive a user pulls."""
    layers = image.layer_members()
    assert len(layers) == 3, "the base, the dependencies, kubetune (images/runtime/Containerfile)"
    members = [m for layer in layers for m in layer]
    assert len(members) > 40_000, "the listing covers the base and the virtualenv"
    kubetune = [m.name for m in layers[2] if m.isfile()]
    assert any(name.endswith("site-packages/kubetune/__init__.py") for name in kubetune)
    assert not any("site-packages/kubetune/" in m.name for m in layers[1]), "the deps layer holds no kubetune"
    bad = [m.name for m in members if FORBIDDEN.search(m.name.lstrip("./"))]
    assert not bad, bad
    assert not any(m.name.lstrip("./").startswith(BUILD_INPUTS) for m in members), "build inputs leaked"


def test_no_private_key_material_in_any_file(rootfs):
    hits = private_key_files(rootfs)
    assert not hits, hits
