"""Start / stop the local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and a real node (containerd, kubelet, kube-proxy, CoreDNS: realnode.py), each a
detached process group with its own log. The components' command lines come from controlplane.py,
the certificates from pki.py.

Driven by e2e/localcluster.sh (which builds the binaries and images first); usable directly:

    python e2e/cluster/localcluster.py up --bin-dir DIR --node-bin-dir DIR  # last line: kubeconfig path
    python e2e/cluster/localcluster.py down
    python e2e/cluster/localcluster.py env                  # export KUBECONFIG=...

Everything lives in the state directory (``$KUBETUNE_STATE_DIR``, default /tmp/kubetune-cluster):
pki/, etcd/, logs/<component>.log, pids/<component>.pid, kubeconfig, node/ (the kubelet's and
containerd's state), containerd/ (images: kept by ``down``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nodecleanup  # noqa: E402 - beside this file, not a package
import realnode  # noqa: E402
from controlplane import (  # noqa: E402
    ControlPlane,
    apiserver_argv,
    controller_manager_argv,
    etcd_argv,
    scheduler_argv,
)

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("KUBETUNE_STATE_DIR", "/tmp/kubetune-cluster"))

ETCD_PORT = int(os.environ.get("KUBETUNE_ETCD_PORT", "23790"))
APISERVER_PORT = int(os.environ.get("KUBETUNE_APISERVER_PORT", "6443"))
KUBELET_PORT = int(os.environ.get("KUBETUNE_KUBELET_PORT", "10250"))
KCM_PORT = int(os.environ.get("KUBETUNE_KCM_PORT", "10257"))
SCHEDULER_PORT = int(os.environ.get("KUBETUNE_SCHEDULER_PORT", "10259"))
BRIDGE = os.environ.get("KUBETUNE_BRIDGE", "kt0")
POD_CIDR = ipaddress.ip_network(os.environ.get("KUBETUNE_POD_CIDR", "10.244.0.0/24"))
GATEWAY = str(next(POD_CIDR.hosts()))  # 10.244.0.1: host side of the bridge; pods reach the API here
SERVICE_CIDR = os.environ.get("KUBETUNE_SERVICE_CIDR", "10.96.0.0/16")
DNS_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])  # 10.96.0.10, the kube-dns Service
NODE_NAME = os.environ.get("KUBETUNE_NODE_NAME", "kubetune-node")
# The node used to be chosen by KUBETUNE_NODE (agent or kubelet); only the real node is left.
if os.environ.get("KUBETUNE_NODE", "kubelet") != "kubelet":
    raise SystemExit(
        f"localcluster: KUBETUNE_NODE={os.environ['KUBETUNE_NODE']!r}: the node agent was removed; the local"
        " cluster's node is always the real one (kubelet + containerd). Unset KUBETUNE_NODE."
    )
CONTROL_PLANE = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
COMPONENTS = CONTROL_PLANE + realnode.COMPONENTS


def log(msg: str) -> None:
    print(f"localcluster: {msg}", file=sys.stderr, flush=True)


def _kubeconfig(path: Path, pki: Path) -> None:
    import yaml

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubetune-local",
                "cluster": {
                    "server": f"https://127.0.0.1:{APISERVER_PORT}",
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "kubetune-admin",
                "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            }
        ],
        "contexts": [
            {
                "name": "kubetune-local",
                "context": {"cluster": "kubetune-local", "user": "kubetune-admin", "namespace": "default"},
            }
        ],
        "current-context": "kubetune-local",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _pidfile(comp: str) -> Path:
    return STATE / "pids" / f"{comp}.pid"


def _alive(comp: str) -> int | None:
    try:
        pid = int(_pidfile(comp).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:  # a zombie or a reused pid does not count
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except OSError:
        return None
    return pid


def _spawn(comp: str, argv: list[str], env: dict | None = None) -> None:
    logf = open(STATE / "logs" / f"{comp}.log", "ab")  # noqa: SIM115 - handed to the child
    logf.write(f"\n==== {dt.datetime.now().isoformat()} {' '.join(argv)}\n".encode())
    logf.flush()
    p = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        close_fds=True,
        cwd=STATE,
    )
    _pidfile(comp).write_text(str(p.pid))
    logf.close()


def _ssl_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(pki: Path, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{APISERVER_PORT}{path}", timeout=timeout, context=_ssl_ctx(pki)
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _wait(what: str, fn, timeout: float, comps: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        for c in comps:
            if _alive(c) is None:
                tail = (STATE / "logs" / f"{c}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"localcluster: {c} exited while waiting for {what}; log tail:\n{tail}")
        time.sleep(0.2)
    raise SystemExit(f"localcluster: timed out after {timeout:.0f}s waiting for {what} (logs: {STATE}/logs)")


def _is_ready(pki: Path) -> bool:
    if any(_alive(c) is None for c in COMPONENTS):
        return False
    code, _ = _get(pki, "/readyz")
    if code != 200:
        return False
    code, body = _get(pki, f"/api/v1/nodes/{NODE_NAME}")
    if code != 200:
        return False
    node = json.loads(body)
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    if conds.get("Ready") != "True":
        return False
    if node["status"].get("allocatable", {}).get("nvidia.com/gpu") != _gpus():
        return False
    code, _ = _get(pki, "/api/v1/namespaces/default/serviceaccounts/default")
    return code == 200


def _bridge() -> None:
    def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)

    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge")
    addr = f"{GATEWAY}/{POD_CIDR.prefixlen}"
    if addr not in ip("-o", "addr", "show", "dev", BRIDGE).stdout:
        ip("addr", "add", addr, "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    # Service IPs are kube-proxy's DNAT of pods' traffic; from the host, without this route, traffic to a
    # Service IP would follow the default route off the machine instead of failing at once.
    ip("route", "replace", "blackhole", SERVICE_CIDR)


def _gpus() -> str:
    return os.environ.get("KUBETUNE_NODE_GPUS", "8")


def _real_node(bin_dir: Path, node_bin_dir: Path) -> realnode.Node:
    return realnode.Node(
        state=STATE,
        bin_dir=node_bin_dir,
        kube_bin_dir=bin_dir,
        name=NODE_NAME,
        gateway=GATEWAY,
        bridge=BRIDGE,
        pod_cidr=str(POD_CIDR),
        service_cidr=SERVICE_CIDR,
        dns_ip=DNS_IP,
        kubelet_port=KUBELET_PORT,
        apiserver_port=APISERVER_PORT,
        gpus=_gpus(),
    )


def _start_real_node(
    b: Path, node_bin_dir: Path, kubeconfig: Path, pki: Path, python: str, timeout: float
) -> None:
    node = _real_node(b, node_bin_dir)
    realnode.prepare(node)
    realnode.start_containerd(node, _spawn)
    _wait("containerd", lambda: realnode.containerd_ready(node), 30, ["containerd"])
    realnode.import_images(node, realnode.images_to_import(node_bin_dir, REPO, log), log)
    realnode.start_kubelet(node, _spawn, python)
    realnode.start_services(node, _spawn, kubeconfig, python)
    _wait("node registered", lambda: _get(pki, f"/api/v1/nodes/{NODE_NAME}")[0] == 200, timeout, COMPONENTS)
    realnode.advertise_gpus(node, kubeconfig)


def up(bin_dir: Path, node_bin_dir: Path, python: str, timeout: float) -> Path:
    pki = STATE / "pki"
    kubeconfig = STATE / "kubeconfig"
    if kubeconfig.exists() and _is_ready(pki):
        return kubeconfig
    # anything half-running is stopped first (keeping etcd's data and the certificates)
    down(wipe=False, quiet=True)
    t0 = time.monotonic()
    for d in ("logs", "pids", "etcd", "node"):
        (STATE / d).mkdir(parents=True, exist_ok=True)
    # imported here: down, env and status also run on a python3 without cryptography
    from pki import write_cluster_pki

    write_cluster_pki(pki, node_name=NODE_NAME, gateway=GATEWAY, service_cidr=SERVICE_CIDR)
    _kubeconfig(kubeconfig, pki)
    _bridge()
    cp = _control_plane(bin_dir)
    _spawn("etcd", etcd_argv(cp))
    _spawn("kube-apiserver", apiserver_argv(cp))
    _wait("etcd", lambda: _port_open(ETCD_PORT), 30, ["etcd"])
    _wait(
        "kube-apiserver /readyz", lambda: _get(pki, "/readyz")[0] == 200, timeout, ["etcd", "kube-apiserver"]
    )
    _spawn("kube-controller-manager", controller_manager_argv(cp))
    _spawn("kube-scheduler", scheduler_argv(cp))
    _start_real_node(bin_dir, node_bin_dir, kubeconfig, pki, python, timeout)
    _wait("node Ready, GPUs, default ServiceAccount", lambda: _is_ready(pki), timeout, COMPONENTS)
    log(f"ready in {time.monotonic() - t0:.1f}s; logs in {STATE / 'logs'}")
    return kubeconfig


def _control_plane(bin_dir: Path) -> ControlPlane:
    return ControlPlane(
        state=STATE,
        bin_dir=bin_dir,
        etcd_port=ETCD_PORT,
        apiserver_port=APISERVER_PORT,
        controller_manager_port=KCM_PORT,
        scheduler_port=SCHEDULER_PORT,
        service_cidr=SERVICE_CIDR,
        gateway=GATEWAY,
    )


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def down(wipe: bool = True, quiet: bool = False) -> None:
    # the node first: the kubelet leaves its containers to containerd, which nodecleanup.stop_pods
    # empties before containerd stops; the control plane last
    node = _node_for_cleanup()
    for comp in reversed(COMPONENTS):
        if comp == "containerd":
            nodecleanup.stop_pods(node)
        pid = _alive(comp)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            continue
        deadline = time.monotonic() + (15 if comp == "containerd" else 10)
        while time.monotonic() < deadline and _alive(comp) is not None:
            time.sleep(0.1)
        if _alive(comp) is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if not quiet:
            log(f"stopped {comp}")
    nodecleanup.cleanup(node, wipe=wipe)
    if wipe:
        subprocess.run(["ip", "route", "del", "blackhole", SERVICE_CIDR], capture_output=True, check=False)
        import shutil

        for d in ("etcd", "node", "pids", "pki"):
            shutil.rmtree(STATE / d, ignore_errors=True)
        (STATE / "kubeconfig").unlink(missing_ok=True)


def _node_for_cleanup() -> realnode.Node:
    """The node's paths; the binaries are found from its containerd's config (ctr beside containerd)."""
    return _real_node(Path("/nonexistent"), realnode.installed_bin_dir(STATE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["up", "down", "env", "status"])
    ap.add_argument("--bin-dir", type=Path)
    ap.add_argument("--node-bin-dir", type=Path, help="e2e/node/build.sh's bin directory")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    if a.cmd in ("up", "down"):
        # one `up` or `down` at a time (parallel test sessions share the cluster)
        import fcntl

        lock = open(STATE / ".lock", "w")  # noqa: SIM115 - held until exit
        fcntl.flock(lock, fcntl.LOCK_EX)
    if a.cmd == "up":
        if a.bin_dir is None or a.node_bin_dir is None:
            ap.error("up needs --bin-dir and --node-bin-dir")
        kc = up(a.bin_dir, a.node_bin_dir, a.python, a.timeout)
        print(kc)
    elif a.cmd == "down":
        down()
    elif a.cmd == "env":
        print(f"export KUBECONFIG={STATE / 'kubeconfig'}")
    else:
        ok = (STATE / "kubeconfig").exists() and _is_ready(STATE / "pki")
        print("ready" if ok else "not ready")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
