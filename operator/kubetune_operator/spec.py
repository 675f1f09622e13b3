"""The FineTuneJob resource: its spec as pydantic models, and the one validation everybody runs.

The admission webhook, the reconciler (with the webhook off) and the CRD generator all start here,
so a bad job is described the same way wherever it is caught: one `ConfigProblem` per fault, with
the key path from the top of the object (``spec.config.datasets[0].type``) and what to write
instead.

Kubernetes-native pieces of the pod (env, volumes, tolerations, affinity, ...) are kept as plain
mappings: the apiserver validates them precisely when the StatefulSet is applied, and copying their
whole schemas into ours would only go stale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from kubetune.config import ConfigError, ConfigProblem, TrainConfig, load_config, validate_mapping
from kubetune.config.loading import bound_problems, parse_yaml
from kubetune.config.mesh import layout_problems
from kubetune.config.problems import translate
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

# The installer's policy is part of validation: importers find it here too (explicit re-exports).
from kubetune_operator.admission import AdmissionPolicy as AdmissionPolicy
from kubetune_operator.admission import shared_storage_problems
from kubetune_operator.admission import shares_one_node_claim as shares_one_node_claim

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

# The StatefulSet is named after the job and its pods' controller-revision-hash label is
# "<name>-<10 chars>", which must fit a 63-character label: Kubernetes caps StatefulSet names at 52.
MAX_NAME_LENGTH = 52
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Where the pods see things (fixed, so a job's YAML never needs to know the operator's layout).
CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "config.yaml"
OUTPUTS_DIR = "/var/lib/kubetune/outputs"
CACHE_DIR = "/var/cache/kubetune"
RESERVED_VOLUMES = frozenset({"config", "dshm", "outputs", "cache", "kubetune-tmp"})
RESERVED_MOUNT_PATHS = frozenset({CONFIG_DIR, OUTPUTS_DIR, CACHE_DIR, "/dev/shm"})

QUANTITY = r"^[+]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+|[KMGTPE]i?|[mkMGTPE])?$"
# What a problem's fix points to, and says about the spec's string patterns.
REFERENCE = "docs/kubernetes.md"
PATTERN_FIXES = {QUANTITY: 'write {key} as a Kubernetes quantity such as "8Gi"'}

# Bounds on the spec's own strings, lists and maps (the CRD carries them too, so the apiserver refuses
# an oversized object before any webhook or reconcile reads it).
NAME_MAX = 253  # a Kubernetes object name
TEXT_MAX = 4096  # an image reference, a path, a label value
LIST_MAX = 256  # volumes, mounts, env entries, tolerations
MAP_MAX = 256  # labels, annotations, node selectors, resources
# Where a refusal message stops (the webhook's answer, status.message, an Event): a config with
# thousands of unknown keys must not produce megabytes of text.
REPORT_PROBLEMS = 50
REPORT_CHARS = 16_000

K8sObject = dict[str, Any]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]


def _read_write_once() -> list[AccessMode]:
    return ["ReadWriteOnce"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigMapRef(_Model):
    """A ConfigMap holding the training config (read once, when the job first starts)."""

    name: str = Field(
        min_length=1, max_length=NAME_MAX, description="Name of the ConfigMap in the job's namespace."
    )
    key: str = Field(
        CONFIG_FILE,
        min_length=1,
        max_length=NAME_MAX,
        description="Key of the config YAML inside the ConfigMap.",
    )


class ClaimTemplate(_Model):
    """A PersistentVolumeClaim the operator creates for the job."""

    size: str = Field(pattern=QUANTITY, max_length=64, description='Requested capacity, e.g. "100Gi".')
    storageClassName: str | None = Field(
        None, max_length=NAME_MAX, description="StorageClass; the cluster default when absent."
    )
    accessModes: list[AccessMode] = Field(
        default_factory=_read_write_once,
        min_length=1,
        max_length=4,
        description="Access modes; multi-node jobs on ReadWriteOnce storage only work on one node.",
    )
    whenDeleted: Literal["Delete", "Retain"] = Field(
        "Delete",
        description="Delete: the claim belongs to the job and goes with it. Retain: it outlives the job.",
    )


class VolumeChoice(_Model):
    """Exactly one of: an existing claim, a claim template, or any Kubernetes volume source."""

    existingClaim: str | None = Field(
        None, min_length=1, max_length=NAME_MAX, description="Name of an existing PVC."
    )
    claimTemplate: ClaimTemplate | None = Field(None, description="A PVC the operator creates.")
    volume: K8sObject | None = Field(
        None,
        max_length=MAP_MAX,
        description="Any Kubernetes volume source, e.g. {nfs: {...}} (hostPath only where the operator allows it).",
    )
    subPath: str | None = Field(
        None, max_length=TEXT_MAX, description="Mount only this sub-directory of the volume."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeChoice:
        chosen = [k for k in ("existingClaim", "claimTemplate", "volume") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise PydanticCustomError(
                "exactly_one",
                "set exactly one of existingClaim, claimTemplate or volume (found {found})",
                {
                    "found": ", ".join(chosen) or "none",
                    "fix": "keep one of existingClaim, claimTemplate or volume",
                },
            )
        return self


class Storage(VolumeChoice):
    """Where outputs and checkpoints go (mounted at /var/lib/kubetune/outputs)."""


class Cache(VolumeChoice):
    """A volume for model and dataset caches shared between runs (mounted at /var/cache/kubetune)."""

    readOnly: bool = Field(False, description="Mount the cache read-only.")


class ResourceRequirements(_Model):
    requests: dict[str, int | str] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Resource requests per worker pod."
    )
    limits: dict[str, int | str] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Resource limits per worker pod."
    )


class RunPolicy(_Model):
    backoffLimit: int = Field(3, ge=0, description="Group restarts allowed before the job is Failed.")
    activeDeadlineSeconds: int | None = Field(
        None, ge=1, description="Fail the job (DeadlineExceeded) this long after it started running."
    )
    ttlSecondsAfterFinished: int | None = Field(
        None, ge=0, description="Delete the job (and its children) this long after it finished."
    )


class PodMetadata(_Model):
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Extra labels on the worker pods."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Extra annotations on the worker pods."
    )


class EnvVar(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=TEXT_MAX, description="Variable name.")


class Volume(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=63, description="Volume name (unique in the pod).")


class VolumeMount(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=63, description="Name of the volume to mount.")
    mountPath: str = Field(
        min_length=1, max_length=TEXT_MAX, description="Where the volume appears in the trainer container."
    )


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, max_length=NAME_MAX, description="Name of the Secret.")


class SeccompProfile(_Model):
    type: Literal["RuntimeDefault", "Localhost"] = Field(
        description="RuntimeDefault (the default) or Localhost; Unconfined is not allowed."
    )
    localhostProfile: str | None = Field(
        None, max_length=TEXT_MAX, description="With type Localhost: the profile's path on the node."
    )


class PodSecurityContext(_Model):
    """Tightening of the workers' pod securityContext (they meet the restricted Pod Security Standard
    by default: non-root user 1000, seccomp RuntimeDefault); nothing here can loosen it."""

    runAsUser: int | None = Field(None, ge=1, description="User id of the trainer (never 0); default 1000.")
    runAsGroup: int | None = Field(None, ge=0, description="Primary group id; default 1000.")
    fsGroup: int | None = Field(None, ge=0, description="Group that owns the volumes; default 1000.")
    supplementalGroups: list[int] = Field(default_factory=list, max_length=32, description="Extra group ids.")
    fsGroupChangePolicy: Literal["OnRootMismatch", "Always"] | None = Field(
        None, description="When the kubelet changes volume ownership to fsGroup."
    )
    seccompProfile: SeccompProfile | None = Field(None, description="Seccomp profile of the pod.")


class Capabilities(_Model):
    drop: list[str] = Field(
        default_factory=list, max_length=64, description="Capabilities to drop (ALL is always dropped)."
    )


class ContainerSecurityContext(_Model):
    """Tightening of the trainer container's securityContext (privilege escalation is always off and
    every capability dropped); nothing here can loosen it."""

    readOnlyRootFilesystem: bool | None = Field(
        None, description="Mount the image read-only (the runtime writes only to its volumes and /tmp)."
    )
    runAsUser: int | None = Field(None, ge=1, description="User id of the trainer (never 0).")
    runAsGroup: int | None = Field(None, ge=0, description="Primary group id.")
    seccompProfile: SeccompProfile | None = Field(None, description="Seccomp profile of the trainer.")
    capabilities: Capabilities | None = Field(
        None, description="Only `drop`: adding capabilities is refused."
    )


class FineTuneJobSpec(_Model):
    """What to train (config) and where and how to run it (everything else)."""

    config: dict[str, Any] | None = Field(
        None, description="The training config inline (Axolotl key names; see docs/config.md)."
    )
    configMapRef: ConfigMapRef | None = Field(
        None, description="Or: a ConfigMap holding the training config."
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=TEXT_MAX,
        description="Runtime image; the operator's default when absent (the operator may allow only some).",
    )
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy."
    )
    workers: int = Field(1, ge=1, le=1024, description="Number of worker pods (torchrun nodes).")
    gpusPerWorker: int = Field(
        0, ge=0, le=64, description="GPUs (and training processes) per pod; 0 trains on CPU."
    )
    processesPerWorker: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Training processes per pod (torchrun's --nproc-per-node). Default: gpusPerWorker (one per "
        "GPU), or 1 on CPU. On CPU (gpusPerWorker 0) several processes share the pod's CPUs, e.g. a tensor- or "
        "context-parallel group, which must sit in one pod; with GPUs it must equal gpusPerWorker.",
    )
    resources: ResourceRequirements | None = Field(
        None, description="CPU/memory requests and limits per pod."
    )
    nodeSelector: dict[str, str] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Node selector for the worker pods."
    )
    tolerations: list[K8sObject] = Field(
        default_factory=list, max_length=LIST_MAX, description="Tolerations for the worker pods."
    )
    affinity: K8sObject | None = Field(None, description="Affinity of the worker pods.")
    priorityClassName: str | None = Field(
        None, max_length=NAME_MAX, description="PriorityClass of the worker pods."
    )
    serviceAccountName: str | None = Field(
        None,
        max_length=NAME_MAX,
        description="Run pods under this ServiceAccount (the operator may forbid it; it binds progress reporting to it).",
    )
    imagePullSecrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=LIST_MAX, description="Pull secrets."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=LIST_MAX, description="Extra environment (overrides the defaults)."
    )
    envFrom: list[K8sObject] = Field(
        default_factory=list, max_length=LIST_MAX, description="Environment from Secrets/ConfigMaps."
    )
    volumes: list[Volume] = Field(
        default_factory=list, max_length=LIST_MAX, description="Extra volumes of the worker pods."
    )
    volumeMounts: list[VolumeMount] = Field(
        default_factory=list, max_length=LIST_MAX, description="Extra mounts in the trainer."
    )
    podSecurityContext: PodSecurityContext | None = Field(
        None, description="Tighten the workers' pod securityContext (restricted Pod Security by default)."
    )
    securityContext: ContainerSecurityContext | None = Field(
        None, description="Tighten the trainer container's securityContext."
    )
    storage: Storage | None = Field(
        None, description="Outputs and checkpoints; without it they live in an emptyDir and die with the pod."
    )
    cache: Cache | None = Field(None, description="Optional cache volume for models and datasets.")
    shmSize: str | None = Field(
        None, pattern=QUANTITY, max_length=64, description="Size limit of /dev/shm (a memory emptyDir)."
    )
    podMetadata: PodMetadata | None = Field(None, description="Extra labels/annotations on worker pods.")
    terminationGracePeriodSeconds: int = Field(
        120, ge=0, description="Time a worker gets after SIGTERM to write its checkpoint."
    )
    suspend: bool = Field(
        False, description="Scale the job to zero; unsuspend resumes from the last checkpoint."
    )
    runPolicy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadline and clean-up.")

    @property
    def processes_per_worker(self) -> int:
        return self.processesPerWorker or max(1, self.gpusPerWorker)

    @property
    def processes_key(self) -> str:
        """The field the process count comes from, for messages."""
        return "processesPerWorker" if self.processesPerWorker else "gpusPerWorker"


@dataclass(frozen=True)
class Validation:
    """The outcome of validating a job: the parsed spec (when it parses), the config, every problem."""

    spec: FineTuneJobSpec | None
    config: TrainConfig | None  # None while the config lives in a ConfigMap, or when invalid
    problems: list[ConfigProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_spec(spec: Any) -> tuple[FineTuneJobSpec | None, list[ConfigProblem]]:
    """The spec alone: types, ranges, and the rules between fields that pydantic cannot see."""
    if not isinstance(spec, Mapping):
        return None, [ConfigProblem("spec", "spec must be a mapping", "add a spec with config and workers")]
    try:
        parsed = FineTuneJobSpec.model_validate(dict(spec))
    except ValidationError as error:
        problems = translate(
            error,
            spec,
            model=FineTuneJobSpec,
            prefix="spec",
            reference=REFERENCE,
            pattern_fixes=PATTERN_FIXES,
        )
        return None, problems
    problems = []
    if (parsed.config is None) == (parsed.configMapRef is None):
        problems.append(
            ConfigProblem(
                "spec.config",
                "set exactly one of spec.config and spec.configMapRef",
                "put the training config inline under spec.config, or name a ConfigMap in spec.configMapRef",
            )
        )
    for index, volume in enumerate(parsed.volumes):
        if volume.name in RESERVED_VOLUMES:
            problems.append(
                ConfigProblem(
                    f"spec.volumes[{index}].name",
                    f"volume name {volume.name!r} is used by the operator",
                    f"rename it (reserved: {', '.join(sorted(RESERVED_VOLUMES))})",
                )
            )
    declared = {volume.name for volume in parsed.volumes}
    for index, mount in enumerate(parsed.volumeMounts):
        if mount.name not in declared:
            problems.append(
                ConfigProblem(
                    f"spec.volumeMounts[{index}].name",
                    f"no volume named {mount.name!r} in spec.volumes",
                    "add the volume to spec.volumes or fix the name",
                )
            )
        if mount.mountPath.rstrip("/") in RESERVED_MOUNT_PATHS:
            problems.append(
                ConfigProblem(
                    f"spec.volumeMounts[{index}].mountPath",
                    f"{mount.mountPath} is where the operator mounts its own volume",
                    "mount it somewhere else",
                )
            )
    problems += shared_storage_problems(parsed)
    chosen = parsed.processesPerWorker
    if parsed.gpusPerWorker and chosen is not None and chosen != parsed.gpusPerWorker:
        problems.append(
            ConfigProblem(
                "spec.processesPerWorker",
                f"processesPerWorker is {chosen} but gpusPerWorker is {parsed.gpusPerWorker}: kubetune runs one "
                "training process per GPU",
                "remove processesPerWorker (it follows gpusPerWorker), or set it to gpusPerWorker",
            )
        )
    gpu_request = _gpu_resource(parsed)
    if gpu_request is not None and str(gpu_request) != str(parsed.gpusPerWorker):
        problems.append(
            ConfigProblem(
                "spec.resources.limits.nvidia.com/gpu",
                f"nvidia.com/gpu is {gpu_request} but gpusPerWorker is {parsed.gpusPerWorker}",
                "set spec.gpusPerWorker only; the operator requests the GPUs",
            )
        )
    return parsed, problems


def _gpu_resource(spec: FineTuneJobSpec) -> int | str | None:
    if spec.resources is None:
        return None
    return spec.resources.limits.get("nvidia.com/gpu", spec.resources.requests.get("nvidia.com/gpu"))


def validate_name(name: Any) -> list[ConfigProblem]:
    if not isinstance(name, str) or not name:
        return [ConfigProblem("metadata.name", "the job needs a name", "set metadata.name")]
    problems = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(
            ConfigProblem(
                "metadata.name",
                f"name is {len(name)} characters; the job's StatefulSet allows {MAX_NAME_LENGTH}",
                f"use a name of at most {MAX_NAME_LENGTH} characters",
            )
        )
    if not re.match(DNS_1035_LABEL, name):
        problems.append(
            ConfigProblem(
                "metadata.name",
                f"{name!r} cannot name the job's Service (lower-case letters, digits and '-', starting with a letter)",
                "rename the job, e.g. llama3-lora-1",
            )
        )
    return problems


def config_problems(config: Any, prefix: str) -> list[ConfigProblem]:
    """The training config's own validation, with key paths starting at `prefix`."""
    problems = bound_problems(config)  # before anything walks it: no alias bomb, no deep nesting
    if not problems:
        problems = validate_mapping(config)
    return [problem.under(prefix) for problem in problems]


def validate_job(obj: Mapping[str, Any], policy: AdmissionPolicy | None = None) -> Validation:
    """Everything checkable from the object alone (a configMapRef's content is checked when read)."""
    try:
        return _validate_job(obj, policy or AdmissionPolicy())
    except RecursionError:  # a defence in depth: the bounds above should make this unreachable
        problem = ConfigProblem("spec", "the object is nested too deeply to validate", "simplify it")
        return Validation(spec=None, config=None, problems=[problem])


def _validate_job(obj: Mapping[str, Any], policy: AdmissionPolicy) -> Validation:
    name = obj.get("metadata", {}).get("name")
    problems = validate_name(name)
    raw_spec = obj.get("spec")
    spec, spec_problems = validate_spec(raw_spec)
    problems += spec_problems
    if spec is not None:
        problems += policy.problems(spec)
        problems += _name_collisions(name, spec)
    inline = raw_spec.get("config") if isinstance(raw_spec, Mapping) else None
    config = None
    if inline is not None:
        problems += config_problems(inline, "spec.config")
    if inline is not None and not problems:
        config = load_config(inline)
        problems += job_config_problems(config, spec, "spec.config")
        if problems:
            config = None
    return Validation(spec=spec, config=config, problems=problems)


def job_config_problems(
    config: TrainConfig, spec: FineTuneJobSpec | None, prefix: str
) -> list[ConfigProblem]:
    """The config against the job that runs it: the device mesh must fill the job's processes exactly."""
    if spec is None:
        return []
    problems = layout_problems(
        config,
        world_size=spec.workers * spec.processes_per_worker,
        processes_per_node=spec.processes_per_worker,
    )
    jobs = f"workers {spec.workers} × {spec.processes_per_worker} processes per pod ({spec.processes_key})"
    return [replace(problem.under(prefix), message=f"{problem.message} ({jobs})") for problem in problems]


def child_configmaps(name: str) -> tuple[str, ...]:
    """The ConfigMaps the operator creates for job `name` (builders.JobRef names them the same way)."""
    return (f"{name}-config", f"{name}-progress")


def _name_collisions(name: Any, spec: FineTuneJobSpec) -> list[ConfigProblem]:
    if spec.configMapRef is None or not isinstance(name, str):
        return []
    if spec.configMapRef.name not in child_configmaps(name):
        return []
    return [
        ConfigProblem(
            "spec.configMapRef.name",
            f"ConfigMap {spec.configMapRef.name!r} is the name the operator gives this job's own ConfigMap",
            f"rename your ConfigMap (e.g. {name}-source) and point configMapRef at it",
        )
    ]


def load_referenced_config(
    text: str, source: str, spec: FineTuneJobSpec | None = None
) -> tuple[TrainConfig | None, list[ConfigProblem]]:
    """The config read from a ConfigMap, validated like an inline one (paths name the ConfigMap key)."""
    prefix = f"configMap {source}"
    mapping, problems = parse_yaml(text, name=prefix)
    if problems:
        return None, [problem.under(prefix) for problem in problems]
    if not isinstance(mapping, Mapping):
        return None, [ConfigProblem(prefix, "the config must be a YAML mapping", "write key: value pairs")]
    problems = config_problems(mapping, prefix)
    if problems:
        return None, problems
    config = load_config(mapping)
    problems = job_config_problems(config, spec, prefix)
    return (None, problems) if problems else (config, [])


def report(problems: list[ConfigProblem]) -> str:
    """The message a user sees, identical in the webhook's refusal and in a Failed job's status.

    Bounded: the first REPORT_PROBLEMS problems, each cut short, and the count of the rest.
    """
    shown = [
        ConfigProblem(p.path[:300], _cut(p.message, 600), _cut(p.fix, 300))
        for p in problems[:REPORT_PROBLEMS]
    ]
    text = str(ConfigError(shown, source="FineTuneJob"))
    hidden = len(problems) - len(shown)
    if hidden > 0:
        noun = "problem" if hidden == 1 else "problems"
        body = text.split("\n", 1)[1]
        text = f"FineTuneJob: {len(problems)} config problems\n{body}"
        text += f"\n  ... and {hidden} more {noun} (fix these first)"
    return _cut(text, REPORT_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
