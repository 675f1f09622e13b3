"""Per-pod network namespaces: a veth pair from the pod's netns onto the node's bridge."""

from __future__ import annotations

import ipaddress
import subprocess
import threading


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


def netns_prefix(bridge: str) -> str:
    """Pods' network namespaces are named <bridge>-<pod key>: each local cluster has its own bridge."""
    return f"{bridge}-"


def list_netns(bridge: str) -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(netns_prefix(bridge))]


class Network:
    def __init__(self, bridge: str, cidr: str) -> None:
        self.bridge = bridge
        self.net = ipaddress.ip_network(cidr)
        hosts = list(self.net.hosts())
        self.gateway = str(hosts[0])
        self._free = [str(h) for h in hosts[1:]]
        self._used: dict[str, str] = {}
        self._lock = threading.Lock()

    def ensure_bridge(self) -> None:
        if ip("link", "show", self.bridge, check=False).returncode != 0:
            ip("link", "add", self.bridge, "type", "bridge")
        addr = f"{self.gateway}/{self.net.prefixlen}"
        if addr not in ip("-o", "addr", "show", "dev", self.bridge).stdout:
            ip("addr", "add", addr, "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def setup(self, key: str) -> tuple[str, str]:
        """Create netns for a pod key (hex); returns (netns path, pod IP)."""
        with self._lock:
            addr = self._free.pop(0)
            self._used[key] = addr
        ns = netns_prefix(self.bridge) + key
        hv = "ktv" + key[:11]
        ip("netns", "del", ns, check=False)
        ip("link", "del", hv, check=False)
        ip("netns", "add", ns)
        ip("link", "add", hv, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", hv, "master", self.bridge, "up")
        ip("-n", ns, "addr", "add", f"{addr}/{self.net.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", self.gateway)
        return f"/run/netns/{ns}", addr

    def teardown(self, key: str) -> None:
        ip("netns", "del", netns_prefix(self.bridge) + key, check=False)
        ip("link", "del", "ktv" + key[:11], check=False)
        with self._lock:
            addr = self._used.pop(key, None)
            if addr:
                self._free.append(addr)
