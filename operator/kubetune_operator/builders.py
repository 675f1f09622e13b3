"""Pure builders: a FineTuneJob and its training config -> the child objects, as plain dicts.

Nothing here talks to the API; `k8s.py` applies what these return with server-side apply, so
building the same job twice gives the same objects and applying them twice changes nothing.

Children carry the job's selector labels only (never a copy of the job's own labels, which would
make GitOps tools such as ArgoCD believe they own them) and a controller ownerReference, so the
garbage collector removes them with the job even when the operator is not running.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune_operator import fetchstep

# Operator-wide options live in options.py; importers find them here too (explicit re-exports).
from kubetune_operator.options import DEFAULT_IMAGE as DEFAULT_IMAGE
from kubetune_operator.options import DEFAULT_LAUNCHER as DEFAULT_LAUNCHER
from kubetune_operator.options import BuildOptions as BuildOptions
from kubetune_operator.options import parse_resources as parse_resources
from kubetune_operator.security import (
    SCRATCH_DIR,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
    read_only_root,
)
from kubetune_operator.spec import (
    API_VERSION,
    CACHE_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    KIND,
    OUTPUTS_DIR,
    FineTuneJobSpec,
    ResourceRequirements,
    VolumeChoice,
)

MANAGED_BY = "kubetune"
JOB_LABEL = "kubetune.dev/job-name"
COMPONENT_LABEL = "app.kubernetes.io/component"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
CONFIG_HASH_ANNOTATION = "kubetune.dev/config-hash"
CONTAINER = "trainer"
RDZV_PORT = 29400

# NCCL defaults that are right for pods (users override any of them through spec.env).
# NCCL_SOCKET_IFNAME is deliberately left unset: NCCL's own interface choice is right far more often
# than any fixed name would be. NVLS (NVLink SHARP multicast) needs fabric support pods rarely get.
NCCL_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_NVLS_ENABLE": "0",
}


@dataclass(frozen=True)
class JobRef:
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobRef:
        meta = job["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    @property
    def service(self) -> str:
        return f"{self.name}-workers"

    @property
    def statefulset(self) -> str:
        return self.name

    @property
    def configmap(self) -> str:
        return f"{self.name}-config"

    @property
    def service_account(self) -> str:
        return f"{self.name}-worker"

    @property
    def role(self) -> str:
        return f"{self.name}-progress"

    @property
    def progress_configmap(self) -> str:
        return f"{self.name}-progress"

    @property
    def outputs_claim(self) -> str:
        return f"{self.name}-outputs"

    @property
    def cache_claim(self) -> str:
        return f"{self.name}-cache"

    @property
    def rdzv_endpoint(self) -> str:
        return f"{self.name}-0.{self.service}.{self.namespace}.svc.cluster.local:{RDZV_PORT}"


def selector_labels(job: JobRef) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGED_BY, JOB_LABEL: job.name}


def _labels(job: JobRef, component: str) -> dict[str, str]:
    return {**selector_labels(job), "app.kubernetes.io/name": "kubetune", COMPONENT_LABEL: component}


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: JobRef, name: str, component: str, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": job.namespace, "labels": _labels(job, component)}
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


# --- the training config as the pods see it --------------------------------------------------------


def output_dir(job: JobRef, spec: FineTuneJobSpec, config: Mapping[str, Any]) -> str:
    """Where the run writes: the user's own path when it lies on a mounted volume, else the outputs volume.

    Each job object gets its own directory (name + uid prefix) so a job recreated under the same
    name never mistakes the last one's completion marker or checkpoints for its own.
    """
    wanted = config.get("output_dir")
    if isinstance(wanted, str) and posixpath.isabs(wanted):
        mounted = [OUTPUTS_DIR] + [m.mountPath for m in spec.volumeMounts]
        if any(_is_under(wanted, root) for root in mounted):
            return posixpath.normpath(wanted)
    return f"{OUTPUTS_DIR}/{job.name}-{job.uid[:8]}"


def _is_under(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def render_config(job: JobRef, spec: FineTuneJobSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    rendered = dict(config)
    rendered["output_dir"] = output_dir(job, spec, config)
    return rendered


def config_hash(rendered: Mapping[str, Any]) -> str:
    canonical = json.dumps(rendered, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def configmap(job: JobRef, rendered: Mapping[str, Any]) -> dict[str, Any]:
    meta = _metadata(job, job.configmap, "config")
    meta["annotations"] = {CONFIG_HASH_ANNOTATION: config_hash(rendered)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_FILE: yaml.safe_dump(dict(rendered), sort_keys=False)},
    }


# --- networking and identity --------------------------------------------------------------------


def service(job: JobRef) -> dict[str, Any]:
    """Headless, and publishing not-ready pods: torchrun needs `<job>-0`'s DNS name before anything is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.service, "workers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job),
            "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def network_policy(job: JobRef) -> dict[str, Any]:
    """Only the job's own workers may connect to them: the rendezvous port and NCCL's ports are
    otherwise open to every pod the namespace's policies let through."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, job.service, "network"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(job)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector_labels(job)}}]}],
        },
    }


def service_account(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(job, job.service_account, "worker"),
    }


def progress_configmap(job: JobRef) -> dict[str, Any]:
    """Where rank 0 reports progress (key progress.json). The operator applies only its metadata, so
    re-applying never erases a report; it copies the report into status.progress (progress.py)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, job.progress_configmap, "progress"),
    }


def progress_role(job: JobRef) -> dict[str, Any]:
    """Exactly what rank 0 needs to report progress: its own job's progress ConfigMap, nothing else.

    Not the job's status: code running in a pod could then rewrite the operator's bookkeeping
    (restarts, startTime, phase) and escape backoffLimit or activeDeadlineSeconds.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, job.role, "progress"),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [job.progress_configmap],
                "verbs": ["get", "patch"],
            }
        ],
    }


def progress_role_binding(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, job.role, "progress"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": job.role},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": spec.serviceAccountName or job.service_account,
                "namespace": job.namespace,
            }
        ],
    }


# --- storage ------------------------------------------------------------------------------------


def claims(job: JobRef, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    out = []
    for choice, name, component in (
        (spec.storage, job.outputs_claim, "outputs"),
        (spec.cache, job.cache_claim, "cache"),
    ):
        if choice is None or choice.claimTemplate is None:
            continue
        template = choice.claimTemplate
        claim_spec: dict[str, Any] = {
            "accessModes": list(template.accessModes),
            "resources": {"requests": {"storage": template.size}},
        }
        if template.storageClassName is not None:
            claim_spec["storageClassName"] = template.storageClassName
        owned = template.whenDeleted == "Delete"
        out.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": _metadata(job, name, component, owned=owned),
                "spec": claim_spec,
            }
        )
    return out


def _volume_source(choice: VolumeChoice | None, claim_name: str) -> dict[str, Any]:
    if choice is None:
        return {"emptyDir": {}}
    if choice.existingClaim is not None:
        return {"persistentVolumeClaim": {"claimName": choice.existingClaim}}
    if choice.claimTemplate is not None:
        return {"persistentVolumeClaim": {"claimName": claim_name}}
    return dict(choice.volume or {})


# --- the workers ----------------------------------------------------------------------------------


STOP_MARGIN_S = 5  # of the grace period, left for torchrun to exit once its workers have


def worker_env(job: JobRef, spec: FineTuneJobSpec, *, fetched: bool = False) -> list[dict[str, Any]]:
    """torchrun reads its options from PET_* variables (the Kubeflow convention); users override any entry.
    `fetched`: a fetch step fills the cache first (fetchstep.py), so the trainer runs offline."""
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_JOB_NAME", "value": job.name},
        {"name": "KUBETUNE_JOB_NAMESPACE", "value": job.namespace},
        {"name": "KUBETUNE_PROGRESS_CONFIGMAP", "value": job.progress_configmap},
        {"name": "PET_NNODES", "value": str(spec.workers)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.processes_per_worker)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
        },
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": job.rdzv_endpoint},
        {"name": "PET_RDZV_ID", "value": job.uid},
        # The operator restarts the whole group (a fresh rendezvous from the last checkpoint);
        # torchrun restarting its local workers on its own would race with that.
        {"name": "PET_MAX_RESTARTS", "value": "0"},
        # `kubetune launch` lets the workers finish their SIGTERM checkpoint for this long before
        # SIGKILL (plain torchrun: 30 s); the rest of the grace period is torchrun's own exit.
        {"name": "KUBETUNE_WORKER_STOP_TIMEOUT", "value": str(worker_stop_timeout(spec))},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *({"name": k, "value": v} for k, v in NCCL_ENV.items()),
    ]
    if read_only_root(spec):
        env.append({"name": "HOME", "value": SCRATCH_DIR})
    if spec.cache is not None or fetched:
        env.append({"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"})
        env.append({"name": "KUBETUNE_CACHE_DIR", "value": CACHE_DIR})
    user = [e.model_dump(exclude_none=True) for e in spec.env]
    overridden = {e["name"] for e in user}
    if fetched:
        env += fetchstep.offline_env(overridden)
    return [e for e in env if e["name"] not in overridden] + user


def worker_stop_timeout(spec: FineTuneJobSpec) -> int:
    return max(1, spec.terminationGracePeriodSeconds - STOP_MARGIN_S)


def worker_resources(spec: FineTuneJobSpec, defaults: ResourceRequirements | None = None) -> dict[str, Any]:
    """The job's own spec.resources, else the operator's defaults; GPUs always from gpusPerWorker."""
    chosen = spec.resources if spec.resources is not None else defaults
    requests = dict(chosen.requests) if chosen else {}
    limits = dict(chosen.limits) if chosen else {}
    if spec.gpusPerWorker > 0:
        # Extended resources must have requests == limits; setting the limit implies the request.
        limits["nvidia.com/gpu"] = spec.gpusPerWorker
        requests.pop("nvidia.com/gpu", None)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes_and_mounts(
    job: JobRef, spec: FineTuneJobSpec, fetched: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    dshm: dict[str, Any] = {"medium": "Memory"}
    if spec.shmSize:
        dshm["sizeLimit"] = spec.shmSize
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": job.configmap}},
        {"name": "dshm", "emptyDir": dshm},
        {"name": "outputs", **_volume_source(spec.storage, job.outputs_claim)},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        _mount("outputs", OUTPUTS_DIR, spec.storage),
    ]
    if read_only_root(spec):
        volumes.append({"name": SCRATCH_VOLUME, "emptyDir": {}})
        mounts.append({"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR})
    if spec.cache is not None:
        volumes.append({"name": "cache", **_volume_source(spec.cache, job.cache_claim)})
        cache_mount = _mount("cache", CACHE_DIR, spec.cache)
        if spec.cache.readOnly:
            cache_mount["readOnly"] = True
        mounts.append(cache_mount)
    elif fetched:  # the fetch step and the trainer share the pod's own cache
        volumes.append({"name": "cache", "emptyDir": {}})
        mounts.append({"name": "cache", "mountPath": CACHE_DIR})
    volumes += [v.model_dump(exclude_none=True) for v in spec.volumes]
    mounts += [m.model_dump(exclude_none=True) for m in spec.volumeMounts]
    return volumes, mounts


def _mount(name: str, path: str, choice: VolumeChoice | None) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if choice is not None and choice.subPath:
        mount["subPath"] = choice.subPath
    return mount


def statefulset(
    job: JobRef, spec: FineTuneJobSpec, rendered: Mapping[str, Any], replicas: int, options: BuildOptions
) -> dict[str, Any]:
    fetched = fetchstep.wanted(spec, rendered)
    volumes, mounts = _volumes_and_mounts(job, spec, fetched)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or options.default_image,
        "command": list(options.launcher),
        "args": ["-m", "kubetune", "train", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": worker_env(job, spec, fetched=fetched),
        "ports": [{"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        # Rank 0 writes a one-line JSON summary on success; a crash leaves its last log lines here.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(spec),
    }
    if spec.imagePullPolicy:
        container["imagePullPolicy"] = spec.imagePullPolicy
    if spec.envFrom:
        container["envFrom"] = list(spec.envFrom)
    resources = worker_resources(spec, options.default_resources)
    if resources:
        container["resources"] = resources

    pod_labels = {**(spec.podMetadata.labels if spec.podMetadata else {}), **_labels(job, "worker")}
    pod_annotations = {
        **(spec.podMetadata.annotations if spec.podMetadata else {}),
        CONFIG_HASH_ANNOTATION: config_hash(rendered),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": spec.serviceAccountName or job.service_account,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.terminationGracePeriodSeconds,
        "securityContext": pod_security_context(spec),
        "containers": [container],
        "volumes": volumes,
    }
    if fetched:
        pod_spec["initContainers"] = [
            fetchstep.fetch_container(container, options.fetcher, f"{CONFIG_DIR}/{CONFIG_FILE}")
        ]
    optional = {
        "nodeSelector": dict(spec.nodeSelector),
        "tolerations": list(spec.tolerations),
        "affinity": spec.affinity,
        "priorityClassName": spec.priorityClassName,
        "imagePullSecrets": [s.model_dump() for s in spec.imagePullSecrets],
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(job, job.statefulset, "workers"),
        "spec": {
            "replicas": replicas,
            "serviceName": job.service,
            "podManagementPolicy": "Parallel",
            # The operator restarts the group itself; the StatefulSet controller must never roll pods.
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector_labels(job)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def children(
    job: JobRef,
    spec: FineTuneJobSpec,
    config: Mapping[str, Any],
    replicas: int,
    options: BuildOptions,
) -> list[dict[str, Any]]:
    """Every child, in the order they are applied (what the StatefulSet's pods need comes first)."""
    rendered = render_config(job, spec, config)
    objects = claims(job, spec)
    if spec.serviceAccountName is None:
        objects.append(service_account(job))
    objects += [
        progress_configmap(job),
        progress_role(job),
        progress_role_binding(job, spec),
        configmap(job, rendered),
        service(job),
        statefulset(job, spec, rendered, replicas, options),
    ]
    if options.network_policy:
        objects.insert(-1, network_policy(job))  # before the pods exist
    return objects


def outputs_location(job: JobRef, spec: FineTuneJobSpec, rendered: Mapping[str, Any]) -> dict[str, str]:
    """Where a finished run's outputs can be found (recorded in status.outputs)."""
    storage = spec.storage
    if storage is None:
        volume = "emptyDir (gone with the pods; set spec.storage to keep outputs)"
    elif storage.existingClaim is not None:
        volume = f"persistentvolumeclaim/{storage.existingClaim}"
    elif storage.claimTemplate is not None:
        volume = f"persistentvolumeclaim/{job.outputs_claim}"
    else:
        volume = "spec.storage.volume"
    return {"outputDir": rendered["output_dir"], "volume": volume}
