"""The local cluster's node: containerd + runc + the bridge/host-local CNI
plugins, the kubelet, kube-proxy (iptables) and CoreDNS behind the ``kube-dns`` Service, all host
processes started by localcluster.py from binaries of e2e/node/build.sh (runc and the CNI plugins are
Debian's). Images reach containerd only from OCI archives (``ctr -n k8s.io images import``); nothing is
pulled.

Layout under the state directory: ``node/`` (kubelet root, CNI config and IPAM, configs: removed by
``down``), ``containerd/`` (content and snapshots: kept by ``down`` so a 3 GB image is imported once),
``logs/pods/`` (the kubelet's pod logs, kept after their pods: podlogs.py). docs/testing.md "Real node" says why
each setting is what it is on these machines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

CONTAINERD_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "localhost/kubetune/pause:3.10"
# a name that exists only to be removed: its removal makes containerd collect garbage synchronously
GC_TRIGGER = "localhost/kubetune/gc-trigger:latest"
CLUSTER_DOMAIN = "cluster.local"
# in start order; `down` stops them in reverse (the kubelet before containerd, whose remaining containers
# nodecleanup.stop_pods removes)
COMPONENTS = ["containerd", "podlogs", "kubelet", "kube-proxy", "coredns", "provisioner"]


@dataclass(frozen=True)
class Node:
    state: Path
    bin_dir: Path  # kubelet, kube-proxy, coredns, containerd, containerd-shim-runc-v2, ctr, pause.oci.tar
    kube_bin_dir: Path  # kubectl
    name: str
    gateway: str  # host side of the bridge: node IP, CoreDNS's address
    bridge: str
    pod_cidr: str
    service_cidr: str
    dns_ip: str
    kubelet_port: int
    apiserver_port: int
    gpus: str

    @property
    def dir(self) -> Path:
        return self.state / "node"

    @property
    def sock(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def dns_port(self) -> int:  # CoreDNS on the host; the Service maps 53 to it
        return int(os.environ.get("KUBETUNE_DNS_PORT", "1053"))


def ctr(node: Node, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(node.bin_dir / "ctr"), "--address", str(node.sock), "--namespace", CONTAINERD_NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def containerd_config(node: Node) -> str:
    d = node.dir
    # restrict_oom_score_adj: these machines withhold CAP_SYS_RESOURCE, so runc cannot lower a
    # container's oom_score_adj to the kubelet's -998/-997 (every sandbox failed without it).
    return f"""version = 3
root = "{node.state / "containerd"}"
state = "{d / "containerd-state"}"
[grpc]
  address = "{node.sock}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_unprivileged_ports = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc") or "/usr/sbin/runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin_dir()}"]
    conf_dir = "{d / "cni"}"
"""


def cni_bin_dir() -> str:
    for d in ("/usr/lib/cni", "/opt/cni/bin"):
        if Path(d, "bridge").exists():
            return d
    raise SystemExit(
        "localcluster: no CNI plugins (bridge, host-local, loopback): run scripts/system-deps.sh install node"
    )


def cni_config(node: Node) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "kubetune",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.dir / "ipam"),
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: Node) -> dict:
    pki = node.state / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # hybrid cgroups are v1 to the kubelet; 1.35+ refuse v1 unless told (KEP-5573)
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",  # no systemd on these machines
        "containerRuntimeEndpoint": f"unix://{node.sock}",
        "port": node.kubelet_port,
        "healthzPort": 0,
        "readOnlyPort": 0,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [node.dns_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "failSwapOn": False,
        # podlogs.py keeps each file (hard links) in logs/pods after the pod goes
        "podLogsDir": str(node.state / "logs" / "kubelet-pods"),
        "containerLogMaxSize": "1Gi",
        # test images are imported, never pulled back: the image GC must not remove them
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # No disk eviction ("0%" turns a signal off): under disk pressure the kubelet deletes unused images
        # first, and an imported image cannot be pulled back (it happened on a shared machine at 99% full).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        "maxPods": 110,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
    }


def kube_proxy_config(node: Node, kubeconfig: Path) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "clusterCIDR": node.pod_cidr,
        "detectLocalMode": "ClusterCIDR",
        "bindAddress": "0.0.0.0",
        # the usual 10256/10249 beside the default kubelet port 10250; moved with it for a second cluster
        "healthzBindAddress": f"127.0.0.1:{node.kubelet_port + 6}",
        "metricsBindAddress": f"127.0.0.1:{node.kubelet_port - 1}",
        # leave the host's conntrack sysctls alone (shared machine)
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def corefile(node: Node, kubeconfig: Path) -> str:
    return f""".:{node.dns_port} {{
    bind {node.gateway}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kubetune-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
    loadbalance
}}
"""


def dns_objects(node: Node) -> list[dict]:
    """kube-dns: a selectorless Service whose one endpoint is CoreDNS on the host (no CoreDNS image)."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": node.dns_ip,
                "ports": [
                    {"name": n, "port": 53, "protocol": p, "targetPort": node.dns_port} for n, p in ports
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "localcluster.kubetune.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [node.gateway], "conditions": {"ready": True}}],
            "ports": [{"name": n, "port": node.dns_port, "protocol": p} for n, p in ports],
        },
    ]


def archive_image(archive: Path) -> tuple[str, str] | None:
    """(name, manifest digest) of the image an OCI archive's index carries (buildah writes the name as
    ref.name)."""
    with tarfile.open(archive) as t:
        member = t.extractfile("index.json")
        index = json.load(member) if member else {}
    for m in index.get("manifests", []):
        ref = m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        if ref:
            return ref, m["digest"]
    return None


def present_images(node: Node) -> dict[str, str]:
    """containerd's images: name -> target digest (`ctr images list`: REF TYPE DIGEST ...)."""
    rows = ctr(node, "images", "list").stdout.splitlines()[1:]
    return {cols[0]: cols[2] for cols in (row.split() for row in rows) if len(cols) >= 3}


def import_images(node: Node, archives: list[tuple[Path, list[str]]], log) -> None:
    """Import each archive unless containerd already holds its image (same name and manifest digest);
    point the extra names at it. A rebuilt image keeps its name (ghcr.io/kubetune/runtime:0.1.0 for every
    checkout): the import moves the name to the new image first, so the layers the two share stay in
    containerd and are not stored twice (the runtime's 5.6 GB of dependencies, whose layer images/build.sh
    rebuilds only when the pins change). Then what no name points to any more is collected, synchronously,
    instead of piling up in containerd/, which `down` keeps: the CRI's `sha256:<image id>` records of
    replaced images (the kubelet has not started yet, so no container uses them) and their content and
    snapshots."""
    present = present_images(node)
    replaced = False  # a name of ours moved to another image: the old one's own content is garbage now
    for archive, tags in archives:
        image = archive_image(archive)
        if image is None:
            raise SystemExit(f"localcluster: {archive} names no image (index.json has no ref.name)")
        ref, digest = image
        if present.get(ref) != digest:
            replaced = replaced or ref in present
            t0 = time.monotonic()
            ctr(node, "images", "import", "--no-unpack=false", str(archive))
            log(f"imported {ref} from {archive} in {time.monotonic() - t0:.0f}s")
            present[ref] = digest
        for tag in map(normalized, tags):
            if present.get(tag) != digest:
                replaced = replaced or tag in present
                ctr(node, "images", "tag", "--force", ref, tag)
                present[tag] = digest
    named = {digest for name, digest in present.items() if not name.startswith("sha256:")}
    orphans = [name for name, digest in present.items() if name.startswith("sha256:") and digest not in named]
    if orphans or replaced:
        # containerd collects garbage synchronously only on a removal: with the orphans, a name made for it
        ctr(node, "images", "tag", "--force", PAUSE_IMAGE, GC_TRIGGER)
        ctr(node, "images", "rm", "--sync", *orphans, GC_TRIGGER)
        log(f"removed {len(orphans)} image(s) no name points to; containerd collected their content")


def images_to_import(node_bin_dir: Path, repo: Path, log) -> list[tuple[Path, list[str]]]:
    """OCI archives to import: the pause image, then $KUBETUNE_NODE_IMAGES (``archive[=name+name]``,
    comma-separated) or, by default, the operator and runtime images of this checkout that images/build.sh
    has built (the runtime image also under the names below)."""
    out = [(node_bin_dir / "pause.oci.tar", [])]
    spec = os.environ.get("KUBETUNE_NODE_IMAGES")
    if spec is not None:
        for item in filter(None, spec.split(",")):
            path, _, names = item.partition("=")
            out.append((Path(path), [n for n in names.split("+") if n]))
        return out
    # the runtime image is also the tests' image and the name examples/finetune-cpu-smoke.yaml's setup Job
    # gives it (the CPU image's tag when Docker builds it, images/runtime/Dockerfile.cpu)
    runtime_names = ["kubetune/runtime:dev", "ghcr.io/kubetune/runtime:0.1.0-cpu"]
    for name, tags in (("operator", []), ("runtime", runtime_names)):
        path = subprocess.run(
            [str(repo / "images" / "build.sh"), "path", name], capture_output=True, text=True, check=False
        ).stdout.strip()
        if path and Path(path).exists():
            out.append((Path(path), tags))
        else:
            log(f"no {name} image built for this checkout (make images): pods naming it will not start")
    return out


def normalized(ref: str) -> str:
    """docker.io/library/ completion, as the CRI resolves a pod's image name."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def prepare(node: Node) -> None:
    """Write every configuration file the node's processes read."""
    import yaml

    d = node.dir
    for sub in ("cni", "ipam", "kubelet"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (node.state / "containerd").mkdir(exist_ok=True)
    (d / "containerd.toml").write_text(containerd_config(node))
    (d / "cni" / "10-kubetune.conflist").write_text(json.dumps(cni_config(node), indent=1))
    (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(node)))
    (d / "bin-dir").write_text(str(node.bin_dir))  # for `down`, which is not told


def installed_bin_dir(state: Path) -> Path:
    try:
        return Path((state / "node" / "bin-dir").read_text().strip())
    except OSError:
        return Path("/nonexistent")


def node_kubeconfig(node: Node, path: Path, cert: str) -> None:
    import yaml

    pki = node.state / "pki"
    cfg = yaml.safe_load((node.state / "kubeconfig").read_text())
    cfg["users"][0]["user"] = {
        "client-certificate": str(pki / f"{cert}.crt"),
        "client-key": str(pki / f"{cert}.key"),
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def start_containerd(node: Node, spawn) -> None:
    # containerd finds its shim (containerd-shim-runc-v2) on PATH
    env = dict(os.environ, PATH=f"{node.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    spawn(
        "containerd", [str(node.bin_dir / "containerd"), "--config", str(node.dir / "containerd.toml")], env
    )


def containerd_ready(node: Node) -> bool:
    return node.sock.exists() and ctr(node, "version", check=False, timeout=5).returncode == 0


def start_kubelet(node: Node, spawn, python: str) -> None:
    logs = node.state / "logs"
    spawn(
        "podlogs",
        [python, str(Path(__file__).with_name("podlogs.py")), str(logs / "kubelet-pods"), str(logs / "pods")],
    )
    kubeconfig = node.dir / "kubelet.kubeconfig"
    node_kubeconfig(node, kubeconfig, "kubelet")
    spawn("kubelet", kubelet_argv(node, kubeconfig))


def kubelet_argv(node: Node, kubeconfig: Path) -> list[str]:
    return [
        str(node.bin_dir / "kubelet"),
        f"--config={node.dir / 'kubelet.yaml'}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={node.dir / 'kubelet'}",
        # the node's name is the one in its client certificate (system:node:<name>, NodeRestriction)
        f"--hostname-override={node.name}",
        # the bridge's address: pods, the API server's kubelet calls and CoreDNS all reach the node there
        f"--node-ip={node.gateway}",
        "--v=1",
    ]


def start_services(node: Node, spawn, kubeconfig: Path, python: str) -> None:
    """kube-proxy, CoreDNS (+ the kube-dns Service) and the volume provisioner once the API answers."""
    import yaml

    (node.dir / "kube-proxy.yaml").write_text(yaml.safe_dump(kube_proxy_config(node, kubeconfig)))
    spawn(
        "kube-proxy", [str(node.bin_dir / "kube-proxy"), f"--config={node.dir / 'kube-proxy.yaml'}", "--v=1"]
    )
    (node.dir / "Corefile").write_text(corefile(node, kubeconfig))
    spawn("coredns", [str(node.bin_dir / "coredns"), "-conf", str(node.dir / "Corefile")])
    kubectl(node, kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(dns_objects(node)))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    spawn(
        "provisioner",
        [python, str(Path(__file__).with_name("provisioner.py")), str(node.state), node.name],
        env,
    )


def kubectl(node: Node, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(node.kube_bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def advertise_gpus(node: Node, kubeconfig: Path) -> None:
    """Fake nvidia.com/gpu capacity, as kind users give it: the kubelet keeps extended resources it
    does not manage and copies them to allocatable."""
    patch = {"status": {"capacity": {"nvidia.com/gpu": node.gpus}}}
    kubectl(
        node,
        kubeconfig,
        "patch",
        "node",
        node.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
