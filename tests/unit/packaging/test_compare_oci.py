"""images/compare_oci.py, the check behind `images/build.sh verify-reproducible`, on small OCI archives made here."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from tests.unit.packaging.helm import REPO

_spec = importlib.util.spec_from_file_location("compare_oci", REPO / "images" / "compare_oci.py")
compare_oci = importlib.util.module_from_spec(_spec)
sys.modules["compare_oci"] = compare_oci  # dataclasses look their module up there
_spec.loader.exec_module(compare_oci)

BASE = {"etc/os-release": b"bookworm\n", "usr/bin/python3": b"\x7fELF"}
APP = {"opt/kubetune/bin/kubetune": b"#!/opt/kubetune/bin/python\n", "opt/kubetune/RECORD": b"a,b\n"}


def _tar_gz(files: dict[str, bytes], mtime: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _archive(path: Path, layers: list[dict[str, bytes]], *, mtime: int = 1767225600, user: str = "1000:1000"):
    """An OCI image layout in a tar, as `buildah push oci-archive:` writes one."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_refs = [add(_tar_gz(files, mtime)) for files in layers]
    config = add(json.dumps({"architecture": "amd64", "os": "linux", "config": {"User": user}}).encode())
    manifest = add(json.dumps({"schemaVersion": 2, "config": config, "layers": layer_refs}).encode())
    index = {"schemaVersion": 2, "manifests": [manifest]}
    with tarfile.open(path, "w") as oci:
        for name, data in [("index.json", json.dumps(index).encode())] + [
            ("blobs/sha256/" + d.split(":")[1], b) for d, b in blobs.items()
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            oci.addfile(info, io.BytesIO(data))
    return path


def test_the_same_inputs_are_reproducible(tmp_path, capsys):
    a = _archive(tmp_path / "a.oci.tar", [BASE, APP])
    b = _archive(tmp_path / "b.oci.tar", [BASE, APP])
    assert compare_oci.main(["compare_oci.py", str(a), str(b)]) == 0
    assert "reproducible: manifest sha256:" in capsys.readouterr().out


def test_a_changed_file_is_named_with_what_changed(tmp_path, capsys):
    a = _archive(tmp_path / "a.oci.tar", [BASE, APP])
    changed = dict(APP, **{"opt/kubetune/RECORD": b"a,c\n", "opt/kubetune/extra.pth": b""})
    b = _archive(tmp_path / "b.oci.tar", [BASE, changed])
    assert compare_oci.main(["compare_oci.py", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "layer 0:" not in out, "the base layer is the same"
    assert "layer 1: 0 paths only in A, 1 only in B, 1 changed" in out
    assert "only in B: opt/kubetune/extra.pth" in out
    assert "changed: opt/kubetune/RECORD (sha256)" in out


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mtime": 1767225601}, "changed: etc/os-release (mtime)"),  # a timestamp that leaked into the files
        ({"user": "0:0"}, "config differs in: config"),
    ],
    ids=["file-timestamps", "config"],
)
def test_metadata_differences_are_reported(tmp_path, capsys, kwargs, expected):
    a = _archive(tmp_path / "a.oci.tar", [BASE, APP])
    b = _archive(tmp_path / "b.oci.tar", [BASE, APP], **kwargs)
    assert compare_oci.main(["compare_oci.py", str(a), str(b)]) == 1
    assert expected in capsys.readouterr().out
