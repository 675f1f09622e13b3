"""What an operator admits beyond the schema: its installer's policy, and storage several workers share.

Checked by the webhook and, with the webhook off, by the reconciler (spec.validate_job), before
anything is created; each refusal names the key and what to write instead.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubetune.config import ConfigProblem

if TYPE_CHECKING:
    from kubetune_operator.spec import FineTuneJobSpec


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the operator's installer lets job authors put in a pod (chart values `training.policy`).

    Checked by the webhook and, with the webhook off, by the reconciler before anything is created.
    """

    allow_host_path: bool = False  # hostPath volumes reach the node's files (and break Pod Security)
    allow_service_accounts: bool = True  # spec.serviceAccountName: pods act with that account's rights
    allowed_images: tuple[str, ...] = ()  # shell-style patterns (`*` matches `/` too); empty: any image

    def problems(self, spec: FineTuneJobSpec) -> list[ConfigProblem]:
        problems = []
        if not self.allow_host_path:
            for path in _host_paths(spec):
                problems.append(
                    ConfigProblem(
                        path,
                        "hostPath volumes are not allowed by this operator (they expose the node's files)",
                        "use a PersistentVolumeClaim (storage.claimTemplate or existingClaim) or an nfs volume",
                    )
                )
        if spec.serviceAccountName is not None and not self.allow_service_accounts:
            problems.append(
                ConfigProblem(
                    "spec.serviceAccountName",
                    "this operator runs training pods only under the ServiceAccount it creates for the job",
                    "remove spec.serviceAccountName (ask the administrator for training.policy.allowServiceAccounts)",
                )
            )
        if spec.image is not None and self.allowed_images:
            if not any(fnmatch.fnmatchcase(spec.image, pattern) for pattern in self.allowed_images):
                problems.append(
                    ConfigProblem(
                        "spec.image",
                        f"image {spec.image[:200]!r} is not in this operator's allowed list",
                        f"use an image matching one of: {', '.join(self.allowed_images)} (or leave spec.image out)",
                    )
                )
        return problems


def _host_paths(spec: FineTuneJobSpec) -> list[str]:
    found = [
        f"spec.volumes[{i}].hostPath"
        for i, v in enumerate(spec.volumes)
        if "hostPath" in (v.model_extra or {})
    ]
    for name, choice in (("storage", spec.storage), ("cache", spec.cache)):
        if choice is not None and choice.volume is not None and "hostPath" in choice.volume:
            found.append(f"spec.{name}.volume.hostPath")
    return found


def shared_storage_problems(spec: FineTuneJobSpec) -> list[ConfigProblem]:
    """Several workers must see one outputs volume: rank 0 prepares the data and writes checkpoints there
    and the others read them; a volume of their own waits forever for data that never appears."""
    if spec.workers < 2:
        return []
    storage = spec.storage
    fix = (
        "set spec.storage to a volume every worker mounts: a claimTemplate with accessModes "
        "[ReadWriteMany] (or ReadWriteOnce when all workers fit on one node), an existingClaim, or an nfs "
        "volume; or run workers: 1"
    )
    if storage is None:
        message = f"{spec.workers} workers with no spec.storage: each pod would get its own emptyDir"
        return [ConfigProblem("spec.storage", message, fix)]
    if storage.volume is not None and "emptyDir" in storage.volume:
        message = f"{spec.workers} workers on an emptyDir: each pod would get its own"
        return [ConfigProblem("spec.storage.volume.emptyDir", message, fix)]
    if storage.claimTemplate is not None and list(storage.claimTemplate.accessModes) == ["ReadWriteOncePod"]:
        message = f"{spec.workers} workers on a ReadWriteOncePod claim: only one pod can mount it"
        return [ConfigProblem("spec.storage.claimTemplate.accessModes", message, fix)]
    return []


def shares_one_node_claim(spec: FineTuneJobSpec) -> bool:
    """Several workers on one ReadWriteOnce claim: it works only while they all run on one node."""
    template = spec.storage.claimTemplate if spec.storage is not None else None
    return spec.workers > 1 and template is not None and "ReadWriteMany" not in template.accessModes
