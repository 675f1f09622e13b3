"""The operator image, built by images/build.sh and run with runc (no Docker): what the Helm chart pulls."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.images.oci import (
    BUILD,
    BUILD_INPUTS,
    FORBIDDEN,
    Image,
    build_or_skip,
    pinned_setuptools,
    private_key_files,
    runc_run,
    wheel_generator,
)

pytestmark = pytest.mark.slow
MAX_UNCOMPRESSED_BYTES = 200_000_000


@pytest.fixture(scope="module")
def image() -> Image:
    return Image.open(build_or_skip("operator"))


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    root = tmp_path_factory.mktemp("operator") / "rootfs"
    image.unpack(root)
    yield root
    shutil.rmtree(root)  # pytest keeps its last temporary directories; an unpacked image is too big to keep


def test_the_console_script_runs_as_65532_on_a_read_only_root(image, rootfs, tmp_path):
    p = runc_run(rootfs, image, tmp_path / "help", ["kubetune-operator", "--help"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "usage" in p.stdout.lower() and "--webhook" in p.stdout, p.stdout
    p = runc_run(
        rootfs, image, tmp_path / "id", ["python", "-c", "import os; print(os.getuid(), os.getgid())"]
    )
    assert p.stdout.split() == ["65532", "65532"], p.stdout + p.stderr
    p = runc_run(rootfs, image, tmp_path / "ro", ["python", "-c", "open('/opt/kubetune/x', 'w')"])
    assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stdout + p.stderr


def test_operator_and_config_import_and_torch_is_absent(image, rootfs, tmp_path):
    probe = (
        "import importlib.util, kubetune_operator, kubetune.config; "
        "print('torch' if importlib.util.find_spec('torch') else 'no torch')"
    )
    p = runc_run(rootfs, image, tmp_path / "imports", ["python", "-c", probe])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "no torch"


def test_oci_labels_user_and_entrypoint(image):
    config = image.config["config"]
    labels = config["Labels"]
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.title"] == "kubetune-operator"
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["kubetune-operator"]


def test_no_git_or_secrets_in_any_layer(image):
    members = [m for layer in image.layer_members() for m in layer]
    assert len(members) > 1000, "the listing covers the base and the virtualenv"
    assert any(m.name.endswith("kubetune_operator/__init__.py") for m in members)
    bad = [m.name for m in members if FORBIDDEN.search(m.name.lstrip("./"))]
    assert not bad, bad
    assert not any(m.name.lstrip("./").startswith(BUILD_INPUTS) for m in members), "build inputs leaked"


def test_no_private_key_material_in_any_file(image, rootfs):
    hits = private_key_files(rootfs)
    assert not hits, hits


def test_the_project_wheel_was_built_with_the_pinned_backend(rootfs):
    """images/build-constraints.txt reaches the image (reproducibility: not the newest setuptools on PyPI)."""
    assert wheel_generator(rootfs, "kubetune") == pinned_setuptools()


def test_size_budget(image):
    import json

    build = json.loads((image.archive.parent / "build.json").read_text())
    assert 50_000_000 < build["uncompressed_bytes"] <= MAX_UNCOMPRESSED_BYTES, build


def test_a_second_build_from_the_same_inputs_is_the_same_image(image):
    """Reproducibility: images/build.sh builds the operator again into a scratch directory and compares it with
    the cached archive (images/compare_oci.py: manifest digest, else configuration, layers and file lists)."""
    p = subprocess.run(
        [BUILD, "verify-reproducible", "operator"], capture_output=True, text=True, timeout=1800
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert f"reproducible: manifest {image.manifest_digest}" in p.stdout, p.stdout
