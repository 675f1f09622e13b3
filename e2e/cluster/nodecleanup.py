"""What ``localcluster.py down`` removes after the real node's processes stopped (or crashed): the containers
containerd still runs, the mounts the kubelet made for pods' volumes, the sandboxes' network namespaces and
IPAM leases, veths left on the bridge and, when wiping, the bridge and kube-proxy's iptables chains."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from realnode import Node, containerd_ready, ctr


def stop_pods(node: Node) -> None:
    """After the kubelet stopped: kill and delete what containerd still runs (tasks, containers); the
    kubelet's sandboxes' network namespaces and IPAM go with node/ and cleanup_network."""
    if not containerd_ready(node):
        return
    for task in ctr(node, "tasks", "list", "--quiet", check=False).stdout.split():
        ctr(node, "tasks", "kill", "--signal", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ctr(node, "tasks", "list", "--quiet", check=False).stdout.strip():
        for task in ctr(node, "tasks", "list", "--quiet", check=False).stdout.split():
            ctr(node, "tasks", "delete", "--force", task, check=False)
        time.sleep(0.2)
    for c in ctr(node, "containers", "list", "--quiet", check=False).stdout.split():
        ctr(node, "containers", "delete", c, check=False)


def cleanup(node: Node, wipe: bool) -> None:
    """After every node process stopped: the kubelet's volume mounts (tmpfs of secrets and tokens, bind
    mounts of subPaths) under node/, the sandboxes' network namespaces, the IPAM leases (all sandboxes are
    gone), veths on the bridge; on wipe the bridge and kube-proxy's iptables chains."""
    unmount_under(node.dir)
    cleanup_network(node)
    shutil.rmtree(node.dir / "ipam", ignore_errors=True)
    # a veth still on the bridge (its namespace gone some other way) would keep its pod's address in use
    links = ip("-o", "link", "show", "master", node.bridge).stdout.splitlines()
    for name in filter(None, (line.split(":")[1].strip().split("@")[0] for line in links)):
        ip("link", "del", name)
    if wipe:
        ip("link", "del", node.bridge)
        if (node.bin_dir / "kube-proxy").exists():
            subprocess.run(
                [str(node.bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, check=False, timeout=60
            )


def ip(*args: str) -> subprocess.CompletedProcess:
    """`ip` for cleaning up: what is already gone is not an error."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or below root, deepest first (the kubelet unmounts a pod's
    volumes when it removes the pod; a kubelet that was stopped first leaves them)."""
    root_s = str(root.resolve()) if root.exists() else str(root)
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == root_s or target.startswith(root_s + "/"):
            mounts.append(target)
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, check=False)


def cleanup_network(node: Node) -> None:
    """Network namespaces the CRI made for this node's sandboxes that no process is in any more."""
    for f in Path("/var/run/netns").glob("cni-*"):
        # containerd 2 keeps its sandboxes' netns under /var/run/netns, named cni-<uuid>: another local
        # cluster's live sandboxes have processes in theirs and are left alone
        if not any(_proc_in_netns(f)):
            ip("netns", "delete", f.name)


def _proc_in_netns(ns_file: Path) -> Iterator[int]:
    try:
        ino = ns_file.stat().st_ino
    except OSError:
        return
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "ns" / "net").stat().st_ino == ino:
                    yield int(p.name)
            except OSError:
                continue
