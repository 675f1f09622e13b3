"""Operator-wide options that shape every job's pods: image, launcher, default resources, policy.

Read once at start (command line and environment, see main.py); the builders take them as given.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune_operator.spec import QUANTITY, AdmissionPolicy, ResourceRequirements

# torchrun, giving its workers the pod's grace period after SIGTERM instead of its fixed 30 s
# (runtime/kubetune/train/commands/launch.py; the time comes from KUBETUNE_WORKER_STOP_TIMEOUT).
DEFAULT_LAUNCHER = ("kubetune", "launch")
# The fetch step (init container `fetch`) of jobs that read remote sources; the config path follows.
DEFAULT_FETCHER = ("kubetune", "fetch")
DEFAULT_IMAGE = "ghcr.io/kubetune/runtime:0.1.0"


def parse_resources(text: str | None) -> ResourceRequirements | None:
    """The operator's default worker resources from JSON `{"requests": {...}, "limits": {...}}`.

    Empty or absent text means no defaults. Raises ValueError saying what is wrong: the operator
    refuses to start rather than have every job's StatefulSet refused by the API server later.
    GPUs are not a default: a job asks for them with spec.gpusPerWorker.
    """
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(
            f'expected an object {{"requests": {{...}}, "limits": {{...}}}}, got {text.strip()!r}'
        )
    unknown = sorted(set(value) - {"requests", "limits"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}: only 'requests' and 'limits'")
    parsed: dict[str, dict[str, int | str]] = {}
    for part in ("requests", "limits"):
        amounts = value.get(part) or {}
        if not isinstance(amounts, dict):
            raise ValueError(f"{part} must be an object of resource name -> quantity")
        parsed[part] = {}
        for name, amount in amounts.items():
            if name == "nvidia.com/gpu":
                raise ValueError(
                    f"{part}.nvidia.com/gpu: GPUs are not a default; jobs set spec.gpusPerWorker"
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float, str)):
                raise ValueError(f"{part}.{name}: {amount!r} is not a quantity")
            if isinstance(amount, float):
                amount = int(amount) if amount.is_integer() else repr(amount)
            if not re.match(QUANTITY, str(amount)):
                raise ValueError(f"{part}.{name}: {amount!r} is not a quantity (e.g. 8, 500m, 64Gi)")
            parsed[part][name] = amount
    return ResourceRequirements(**parsed)


@dataclass(frozen=True)
class BuildOptions:
    """Operator-wide settings that shape every job's pods."""

    default_image: str = DEFAULT_IMAGE
    launcher: tuple[str, ...] = DEFAULT_LAUNCHER
    fetcher: tuple[str, ...] = DEFAULT_FETCHER
    # Worker requests/limits of jobs without spec.resources (the chart's training.resources).
    default_resources: ResourceRequirements | None = None
    # What job authors may put in a pod (the chart's training.policy), checked by webhook and reconciler.
    policy: AdmissionPolicy = AdmissionPolicy()
    # A NetworkPolicy per job: its workers accept connections only from each other (rendezvous, NCCL).
    network_policy: bool = False

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        default_image: str = DEFAULT_IMAGE,
        default_resources: ResourceRequirements | None = None,
        policy: AdmissionPolicy | None = None,
        network_policy: bool = False,
    ) -> BuildOptions:
        """KUBETUNE_OPERATOR_TORCHRUN replaces the launcher (local clusters run pods as host processes),
        KUBETUNE_OPERATOR_FETCH the fetch step's command likewise.

        The defaults of the training pods come from the command line (`--runtime-image`,
        `--runtime-resources`), whose own defaults are the env variables the chart sets.
        """
        launcher = tuple(shlex.split(environ.get("KUBETUNE_OPERATOR_TORCHRUN", ""))) or DEFAULT_LAUNCHER
        fetcher = tuple(shlex.split(environ.get("KUBETUNE_OPERATOR_FETCH", ""))) or DEFAULT_FETCHER
        return cls(
            default_image=default_image,
            launcher=launcher,
            fetcher=fetcher,
            default_resources=default_resources,
            policy=policy or AdmissionPolicy(),
            network_policy=network_policy,
        )
