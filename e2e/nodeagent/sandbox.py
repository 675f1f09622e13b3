"""Container launcher, run by the node agent as the first process of a container.

    python sandbox.py SPEC.json

Stdlib only (it runs before the container's environment exists). It joins the pod's network
namespace, makes its own mount and UTS namespaces, sets the hostname, builds a private /dev
(so /dev/termination-log never touches the host's /dev), bind-mounts the pod's volumes,
/etc/hosts and the termination-message file, and then execs the container's command.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src} -> {dst}")


def ensure_target(path: str, is_file: bool) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    if is_file:
        open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def bind(src: str, dst: str, readonly: bool = False, is_dir: bool | None = None) -> None:
    ensure_target(dst, not (os.path.isdir(src) if is_dir is None else is_dir))
    mount(src, dst, None, MS_BIND | MS_REC)
    if readonly:
        mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def private_dev(scratch: str) -> None:
    old = os.path.join(scratch, "hostdev")
    os.makedirs(old, exist_ok=True)
    mount("/dev", old, None, MS_BIND | MS_REC)
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists(os.path.join(old, name)):
            bind(os.path.join(old, name), f"/dev/{name}")
    if os.path.isdir(os.path.join(old, "pts")):
        bind(os.path.join(old, "pts"), "/dev/pts")
        os.symlink("pts/ptmx", "/dev/ptmx")
    os.makedirs("/dev/shm")
    mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.makedirs("/dev/mqueue")
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/dev/{link}")
    _check(libc.umount2(old.encode(), MNT_DETACH), "umount hostdev")


def covers(target: str, path: str) -> bool:
    """Whether a mount at target hides path."""
    target = target.rstrip("/") or "/"
    return path == target or path.startswith(target if target == "/" else target + "/")


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        _check(libc.setns(fd, CLONE_NEWNET), "setns net")
        os.close(fd)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    socket.sethostname(spec["hostname"])
    private_dev(spec["scratch"])
    # Sources are opened before anything is mounted: a volume mounted over /tmp (say) must not hide
    # the sources of the others, which live under the node's state directory.
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/"))  # parents first
    fds = [os.open(m["source"], os.O_PATH | os.O_CLOEXEC) for m in mounts]
    # Pods run in the project's environment (no images): a volume mounted over the directory that
    # holds it (a CI clone under /tmp, an emptyDir at /tmp) must not hide the interpreter's packages.
    keep = [path for path in spec.get("keep_visible", []) if os.path.isdir(path)]
    keep_fds = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in keep]
    for m, fd in zip(mounts, fds, strict=True):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        bind(f"/proc/self/fd/{fd}", m["target"], m.get("readonly", False), is_dir=is_dir)
        os.close(fd)
    for path, fd in zip(keep, keep_fds, strict=True):
        if any(covers(m["target"], path) for m in mounts):
            bind(f"/proc/self/fd/{fd}", path, readonly=False, is_dir=True)
        os.close(fd)
    cwd = spec.get("cwd") or "/"
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    argv = spec["argv"]
    env = spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"nodeagent: failed to start {argv[0]!r}: {e}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report and fail like a runtime would
        print(f"nodeagent sandbox: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(128)
