"""Run a built OCI archive with runc, no Docker: unpack its layers into a root filesystem, write a runc bundle.

images/build.sh makes the archives; the tests here build them (cached by input hash) and run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.paths import REPO

BUILD = REPO / "images" / "build.sh"
HOST_TOOLS = ("mmdebstrap", "buildah", "runc")
# Names that must never be in an image: a checkout's history, keys, credentials, environment files.
FORBIDDEN = re.compile(
    r"(^|/)(\.git|\.netrc|\.pypirc|\.env|id_rsa|id_ed25519|\.docker|credentials(\.json)?)(/|$)"
)
# What a build reads and must leave behind: the wheelhouse, the wheel's source copy, pip's cache.
BUILD_INPUTS = ("wheels/", "wheel-src/", "root/.cache")
# A PEM private key with its body (a library's parser that names the marker is not key material).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}")


def build_or_skip(name: str) -> Path:
    """Builds (or reuses) the image; skips only where this machine cannot build it (not root, tools absent)."""
    if os.geteuid() != 0:
        pytest.skip("images/build.sh needs root (mmdebstrap, buildah --isolation chroot, runc)")
    if not all(shutil.which(tool) for tool in HOST_TOOLS):
        if shutil.which("apt-get") is None:
            pytest.skip(f"needs {', '.join(HOST_TOOLS)} and there is no apt-get to install them")
        subprocess.run([REPO / "scripts" / "system-deps.sh", "install", "images"], check=True, timeout=600)
    p = subprocess.run([BUILD, name], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    return Path(p.stdout.strip().splitlines()[-1])


@dataclass
class Image:
    archive: Path
    manifest_digest: str  # sha256:..., the image's identity
    config: dict  # the OCI image configuration (config.Labels, config.User, config.Env, ...)
    layers: list[str]  # blob names inside the archive, base first

    @classmethod
    def open(cls, archive: Path) -> Image:
        with tarfile.open(archive) as oci:

            def blob(digest: str) -> dict:
                return json.load(oci.extractfile("blobs/sha256/" + digest.split(":", 1)[1]))

            index = json.load(oci.extractfile("index.json"))
            manifest = blob(index["manifests"][0]["digest"])
            config = blob(manifest["config"]["digest"])
        layers = ["blobs/sha256/" + layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]
        return cls(archive, index["manifests"][0]["digest"], config, layers)

    def layer_members(self) -> list[list[tarfile.TarInfo]]:
        with tarfile.open(self.archive) as oci:
            out = []
            for layer in self.layers:
                with tarfile.open(fileobj=oci.extractfile(layer), mode="r:*") as tar:
                    out.append(tar.getmembers())
            return out

    def unpack(self, rootfs: Path) -> None:
        """Applies the layers in order, honouring whiteouts (.wh.<name> deletes <name> from lower layers)."""
        rootfs.mkdir(parents=True)
        with tarfile.open(self.archive) as oci:
            for layer in self.layers:
                with tarfile.open(fileobj=oci.extractfile(layer), mode="r:*") as tar:
                    members = []
                    for member in tar.getmembers():
                        path = Path(member.name)
                        if path.name.startswith(".wh."):
                            target = rootfs / path.parent / path.name.removeprefix(".wh.")
                            if target.is_dir() and not target.is_symlink():
                                shutil.rmtree(target)
                            elif target.exists() or target.is_symlink():
                                target.unlink()
                            continue
                        members.append(member)
                    tar.extractall(rootfs, members=members, numeric_owner=True, filter="fully_trusted")


def private_key_files(rootfs: Path) -> list[str]:
    """The files under 2 MB in an unpacked image that hold PEM private key material (PRIVATE_KEY)."""
    hits = []
    for path in rootfs.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 2_000_000:
            if PRIVATE_KEY.search(path.read_bytes()):
                hits.append(str(path.relative_to(rootfs)))
    return hits


def wheel_generator(rootfs: Path, distribution: str) -> str:
    """The build backend that made an installed distribution's wheel: its .dist-info/WHEEL's Generator line."""
    (wheel,) = rootfs.glob(f"opt/kubetune/lib/python3*/site-packages/{distribution}-*.dist-info/WHEEL")
    return next(line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines()
                if line.startswith("Generator:"))  # fmt: skip


def pinned_setuptools() -> str:
    """The generator images/build-constraints.txt pins for the wheels images/build.sh builds on the host."""
    pins = (REPO / "images" / "build-constraints.txt").read_text()
    return "setuptools (" + re.search(r"^setuptools==(\S+)$", pins, re.M).group(1) + ")"


def runc_run(rootfs: Path, image: Image, bundle: Path, argv: list[str], *, user: tuple[int, int] | None = None,
             volumes: dict[str, Path] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:  # fmt: skip
    """Runs argv in an unpacked image with runc: the image's user (unless overridden) and environment, a
    read-only root filesystem (what the chart's securityContext sets), a tmpfs /tmp (the chart's emptyDir) and
    `volumes` (container path -> host directory) bind-mounted writable."""
    bundle.mkdir(parents=True)
    subprocess.run(["runc", "spec"], check=True, cwd=bundle)
    spec = json.loads((bundle / "config.json").read_text())
    cfg = image.config["config"]
    uid, gid = user or tuple(int(x) for x in cfg["User"].split(":"))
    spec["process"].update(
        terminal=False,
        args=argv,
        user={"uid": uid, "gid": gid},
        env=cfg.get("Env", []),
        cwd=cfg.get("WorkingDir") or "/",
    )
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["mounts"].append(
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        }
    )
    for target, source in (volumes or {}).items():
        spec["mounts"].append(
            {"destination": target, "type": "bind", "source": str(source), "options": ["rbind", "rw"]}
        )
    (bundle / "config.json").write_text(json.dumps(spec))
    container = f"kubetune-test-{os.getpid()}-{bundle.name}"
    try:
        return subprocess.run(["runc", "run", "--bundle", str(bundle), container],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    finally:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
