"""Remove what a (possibly crashed) node agent left behind: pods' process groups, mounts,
network namespaces and, optionally, the bridge."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from nodeagent.net import ip, list_netns


def _pod_pgids(node_dir: Path) -> list[int]:
    pgids = []
    for f in node_dir.glob("pods/*/pgids/*"):
        try:
            pgids.append(int(f.name))
        except ValueError:
            pass
    return pgids


def kill_pgids(pgids: list[int], grace: float = 3.0) -> None:
    for pg in pgids:
        try:
            os.killpg(pg, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while pgids and time.monotonic() < deadline:
        alive = []
        for pg in pgids:
            try:
                os.killpg(pg, 0)
                alive.append(pg)
            except OSError:
                pass
        pgids = alive
        time.sleep(0.1)
    for pg in pgids:
        try:
            os.killpg(pg, signal.SIGKILL)
        except OSError:
            pass


def unmount_under(root: Path) -> None:
    root_s = str(root.resolve()) if root.exists() else str(root)
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == root_s or target.startswith(root_s + "/"):
            mounts.append(target)
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def cleanup_node(node_dir: Path, bridge: str, delete_bridge: bool = False) -> None:
    if node_dir.exists():
        kill_pgids(_pod_pgids(node_dir))
        unmount_under(node_dir)
    for ns in list_netns(bridge):
        ip("netns", "del", ns, check=False)
    # any veth still on the bridge (a namespace by another name) would keep its pod's address in use
    for line in ip("-o", "link", "show", "master", bridge, check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name:
            ip("link", "del", name, check=False)
    if delete_bridge:
        ip("link", "del", bridge, check=False)
