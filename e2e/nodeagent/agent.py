"""The node agent: a Node, its heartbeats, the pods bound to it, a local-directory volume
provisioner, a TCP forwarder so pods reach the API server, and the kubelet log endpoint.

Configuration (environment): KUBECONFIG, KUBETUNE_STATE_DIR, KUBETUNE_NODE_NAME,
KUBETUNE_KUBELET_PORT, KUBETUNE_BRIDGE, KUBETUNE_POD_CIDR, KUBETUNE_APISERVER_PORT,
KUBETUNE_NODE_CPU (default 16), KUBETUNE_NODE_MEMORY (default: the machine's),
KUBETUNE_NODE_GPUS (fake nvidia.com/gpu capacity, default 8), KUBETUNE_NODE_PODS (default 110),
KUBETUNE_NODEAGENT_MAX_BACKOFF (seconds, default 10).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import signal
import threading
import time
from pathlib import Path

import kubernetes
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from nodeagent import cleanup, kubeletapi
from nodeagent.forward import TCPForwarder
from nodeagent.net import Network
from nodeagent.pod import PodWorker

log = logging.getLogger("nodeagent")
PROVISIONER = "kubetune.dev/local-dir"
STORAGE_CLASS = "standard"


def _mem_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


def micro_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Agent:
    def __init__(self) -> None:
        self.state = Path(os.environ.get("KUBETUNE_STATE_DIR", "/tmp/kubetune-cluster"))
        self.node_dir = self.state / "node"
        self.node_name = os.environ.get("KUBETUNE_NODE_NAME", "kubetune-node")
        self.kubelet_port = int(os.environ.get("KUBETUNE_KUBELET_PORT", "10250"))
        self.apiserver_port = int(os.environ.get("KUBETUNE_APISERVER_PORT", "6443"))
        self.network = Network(
            os.environ.get("KUBETUNE_BRIDGE", "kt0"), os.environ.get("KUBETUNE_POD_CIDR", "10.244.0.0/24")
        )
        self.allocatable = {
            "cpu": os.environ.get("KUBETUNE_NODE_CPU", "16"),
            "memory": os.environ.get("KUBETUNE_NODE_MEMORY", str(_mem_bytes())),
            "pods": os.environ.get("KUBETUNE_NODE_PODS", "110"),
            "nvidia.com/gpu": os.environ.get("KUBETUNE_NODE_GPUS", "8"),
            "ephemeral-storage": str(100 << 30),
        }
        config.load_kube_config()
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # ---------------------------------------------------------------- node
    def node_status(self) -> dict:
        t = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        def cond(ctype: str, status: str, reason: str, msg: str) -> dict:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.started_at,
            }

        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond("Ready", "True", "KubeletReady", "kubetune node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.network.gateway},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "kubetune node agent (pods are processes)",
                "containerRuntimeVersion": "kubetune://0.1",
                "kubeletVersion": self.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        self.started_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.kube_version = client.VersionApi(self.api).get_code().git_version
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubetune.dev/local-node": "true",
        }
        try:
            self.core.create_node(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": labels}}
            )
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(self.node_name, {"metadata": {"labels": labels}, "spec": {"taints": None}})
        self.core.patch_node_status(
            self.node_name, {"status": self.node_status()}, _content_type="application/merge-patch+json"
        )

    def heartbeat_loop(self) -> None:
        coord = client.CoordinationV1Api(self.api)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40},
        }
        while not self.stopping.is_set():
            try:
                body["spec"]["renewTime"] = micro_now()
                try:
                    coord.patch_namespaced_lease(
                        self.node_name,
                        "kube-node-lease",
                        {"spec": {"renewTime": body["spec"]["renewTime"], "holderIdentity": self.node_name}},
                        _content_type="application/merge-patch+json",
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
                    coord.create_namespaced_lease("kube-node-lease", body)
            except Exception as e:  # noqa: BLE001 - keep beating
                log.warning("lease renewal failed: %s", str(e).splitlines()[0])
            try:
                self.core.patch_node_status(
                    self.node_name,
                    {"status": self.node_status()},
                    _content_type="application/merge-patch+json",
                )
            except Exception as e:  # noqa: BLE001 - keep beating
                log.warning("node status update failed: %s", str(e).splitlines()[0])
            self.stopping.wait(10)

    # ---------------------------------------------------------------- pods
    def hosts_for(self, w: PodWorker) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        with self.lock:
            workers = list(self.workers.values())
        for o in workers:
            if not o.pod_ip:
                continue
            names = []
            sub = o.pod["spec"].get("subdomain")
            if sub:
                fq = f"{o.hostname}.{sub}.{o.ns}"
                names += [f"{fq}.svc.cluster.local", f"{fq}.svc", fq]
                if o.ns == w.ns:
                    names.append(f"{o.hostname}.{sub}")
            if o is w:
                names.append(o.hostname)
            if names:
                lines.append(f"{o.pod_ip}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    def hosts_changed(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            f = w.dir / "hosts"
            try:
                content = self.hosts_for(w)
                # in place: the file is bind-mounted by inode into running containers
                with open(f, "r+" if f.exists() else "w") as fh:
                    fh.seek(0)
                    fh.write(content)
                    fh.truncate()
            except OSError:
                pass

    def worker_done(self, w: PodWorker) -> None:
        with self.lock:
            if self.workers.get(w.uid) is w:
                del self.workers[w.uid]
        self.hosts_changed()

    def find(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            return next((w for w in self.workers.values() if w.ns == ns and w.name == name), None)

    def pod_loop(self) -> None:
        sel = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                core = client.CoreV1Api(client.ApiClient())
                lst = core.list_pod_for_all_namespaces(field_selector=sel)
                seen = set()
                for p in lst.items:
                    d = self.api.sanitize_for_serialization(p)
                    seen.add(d["metadata"]["uid"])
                    self.on_pod("MODIFIED", d)
                with self.lock:
                    stale = [w for uid, w in self.workers.items() if uid not in seen]
                for w in stale:
                    w.gone()
                for ev in watch.Watch().stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=sel,
                    resource_version=lst.metadata.resource_version,
                    timeout_seconds=300,
                ):
                    self.on_pod(ev["type"], self.api.sanitize_for_serialization(ev["object"]))
                    if self.stopping.is_set():
                        return
            except Exception as e:  # noqa: BLE001 - re-list
                if not self.stopping.is_set():
                    log.warning("pod watch: %s; re-listing", e)
                    time.sleep(1)

    def on_pod(self, etype: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            w = self.workers.get(uid)
        if etype == "DELETED":
            if w:
                w.gone()
            return
        if w:
            w.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            if pod["metadata"].get("deletionTimestamp"):  # finished before an agent restart
                try:
                    self.core.delete_namespaced_pod(
                        pod["metadata"]["name"], pod["metadata"]["namespace"], grace_period_seconds=0
                    )
                except ApiException:
                    pass
            return
        w = PodWorker(self, pod)
        if pod["metadata"].get("deletionTimestamp"):
            w._deleting = True
        with self.lock:
            self.workers[uid] = w
        w.start()

    # ---------------------------------------------------------------- volumes
    def ensure_storage_class(self) -> None:
        st = client.StorageV1Api(self.api)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            st.create_storage_class(body)
        except ApiException as e:
            if e.status != 409:
                raise

    def provision_loop(self) -> None:
        """Binds PVCs to PersistentVolumes backed by directories under the state dir, and
        deletes released ones (an external provisioner, as the PV controller expects)."""
        while not self.stopping.is_set():
            try:
                core = client.CoreV1Api(client.ApiClient())
                for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
                    self._provision(core, pvc)
                for pv in core.list_persistent_volume().items:
                    self._reclaim(core, pv)
                w = watch.Watch()
                for ev in w.stream(core.list_persistent_volume_claim_for_all_namespaces, timeout_seconds=60):
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._provision(core, ev["object"])
                    elif ev["type"] == "DELETED":
                        for pv in core.list_persistent_volume().items:
                            self._reclaim(core, pv)
                    if self.stopping.is_set():
                        return
            except Exception as e:  # noqa: BLE001
                if not self.stopping.is_set():
                    log.warning("provisioner: %s", e)
                    time.sleep(1)

    def _provision(self, core, pvc) -> None:
        sc = pvc.spec.storage_class_name
        if pvc.spec.volume_name or (pvc.status and pvc.status.phase == "Bound"):
            return
        if pvc.metadata.deletion_timestamp or sc not in (None, "", STORAGE_CLASS):
            return
        name = f"pvc-{pvc.metadata.uid}"
        path = self.node_dir / "pv" / name
        path.mkdir(parents=True, exist_ok=True)
        size = ((pvc.spec.resources.requests or {}) if pvc.spec.resources else {}).get("storage", "1Gi")
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": pvc.spec.access_modes or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": sc or "",
                "volumeMode": pvc.spec.volume_mode or "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": pvc.metadata.uid,
                },
            },
        }
        try:
            core.create_persistent_volume(body)
            log.info("provisioned %s for %s/%s", name, pvc.metadata.namespace, pvc.metadata.name)
        except ApiException as e:
            if e.status != 409:
                raise

    def _reclaim(self, core, pv) -> None:
        ann = pv.metadata.annotations or {}
        if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER or not pv.status:
            return
        if pv.status.phase == "Released" and pv.spec.persistent_volume_reclaim_policy == "Delete":
            import shutil

            if pv.spec.host_path:
                shutil.rmtree(pv.spec.host_path.path, ignore_errors=True)
            try:
                core.delete_persistent_volume(pv.metadata.name)
            except ApiException:
                pass

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        cleanup.cleanup_node(self.node_dir, self.network.bridge)  # what a previous agent left
        self.network.ensure_bridge()
        fwd = TCPForwarder((self.network.gateway, self.apiserver_port), ("127.0.0.1", self.apiserver_port))
        fwd.start()
        self.register()
        self.ensure_storage_class()
        pki = self.state / "pki"
        kubeletapi.serve(
            self,
            self.network.gateway,
            self.kubelet_port,
            pki / "kubelet.crt",
            pki / "kubelet.key",
            pki / "ca.crt",
        )
        for fn in (self.heartbeat_loop, self.pod_loop, self.provision_loop):
            threading.Thread(target=fn, name=fn.__name__, daemon=True).start()
        log.info(
            "node %s registered (kubernetes client %s); running pods", self.node_name, kubernetes.__version__
        )

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        procs = []
        for w in workers:
            for c in w.init_ctrs + w.ctrs:
                if c.proc is not None:
                    procs.append(c.proc.pid)
        cleanup.kill_pgids(procs, grace=5)
        cleanup.cleanup_node(self.node_dir, self.network.bridge)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.run()
    stop.wait()
    log.info("stopping")
    agent.shutdown()
