"""The real node's volume provisioner: binds each PVC of the default StorageClass ``standard`` to a
PersistentVolume backed by a directory under ``<state>/node/pv`` and deletes released ones, as kind's
local-path provisioner does.

Directories are mode 0777: a hostPath volume is not re-owned by the kubelet for ``fsGroup``, and the
trainer runs as uid 1000 (the KCM's built-in hostPath provisioner makes them 0750 root, unwritable).

    python e2e/cluster/provisioner.py <state dir> <node name>     (KUBECONFIG: an admin kubeconfig)
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

PROVISIONER = "kubetune.dev/local-dir"
STORAGE_CLASS = "standard"
log = logging.getLogger("provisioner")


def storage_class() -> dict:
    return {
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


def persistent_volume(pvc, path: Path, node: str) -> dict:
    size = ((pvc.spec.resources.requests or {}) if pvc.spec.resources else {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": path.name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": pvc.spec.access_modes or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": pvc.spec.storage_class_name or "",
            "volumeMode": pvc.spec.volume_mode or "Filesystem",
            "hostPath": {"path": str(path), "type": "Directory"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            },
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace,
                "name": pvc.metadata.name,
                "uid": pvc.metadata.uid,
            },
        },
    }


def provision(core, pvc, root: Path, node: str) -> None:
    if pvc.spec.volume_name or (pvc.status and pvc.status.phase == "Bound"):
        return
    if pvc.metadata.deletion_timestamp or pvc.spec.storage_class_name not in (None, "", STORAGE_CLASS):
        return
    path = root / f"pvc-{pvc.metadata.uid}"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    try:
        core.create_persistent_volume(persistent_volume(pvc, path, node))
        log.info("provisioned %s for %s/%s", path.name, pvc.metadata.namespace, pvc.metadata.name)
    except ApiException as e:
        if e.status != 409:
            raise


def reclaim(core, root: Path) -> None:
    for pv in core.list_persistent_volume().items:
        ann = pv.metadata.annotations or {}
        if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER or not pv.status:
            continue
        if pv.status.phase == "Released" and pv.spec.persistent_volume_reclaim_policy == "Delete":
            if pv.spec.host_path and Path(pv.spec.host_path.path).parent == root:
                shutil.rmtree(pv.spec.host_path.path, ignore_errors=True)
            try:
                core.delete_persistent_volume(pv.metadata.name)
            except ApiException:
                pass


def run(root: Path, node: str) -> None:
    config.load_kube_config()
    try:
        client.StorageV1Api().create_storage_class(storage_class())
    except ApiException as e:
        if e.status != 409:
            raise
    while True:
        try:
            core = client.CoreV1Api()
            for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
                provision(core, pvc, root, node)
            reclaim(core, root)
            for ev in watch.Watch().stream(
                core.list_persistent_volume_claim_for_all_namespaces, timeout_seconds=60
            ):
                if ev["type"] in ("ADDED", "MODIFIED"):
                    provision(core, ev["object"], root, node)
                elif ev["type"] == "DELETED":
                    reclaim(core, root)
        except Exception as e:  # noqa: BLE001 - the API restarts under it in some tests: keep serving
            log.warning("provisioner: %s", e)
            time.sleep(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(Path(sys.argv[1]) / "node" / "pv", sys.argv[2])
