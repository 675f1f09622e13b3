"""One reconcile of one FineTuneJob: observe, decide (lifecycle.py), act (k8s.py).

Level-triggered: whatever woke us (the job changed, a pod changed, a timer), we read the job and its
pods afresh and converge. Running it twice in a row, or after an operator restart, is harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from kubetune.config import ConfigProblem
from kubetune.config.loading import parse_yaml

from kubetune_operator import builders
from kubetune_operator import progress as progress_report
from kubetune_operator.builders import JOB_LABEL, BuildOptions, JobRef
from kubetune_operator.k8s import ApiError, Kube
from kubetune_operator.lifecycle import FINAL, Decision, Observed, condition, decide, status_patch
from kubetune_operator.pods import create_failure, live_pods, parse_time
from kubetune_operator.spec import CONFIG_FILE, FineTuneJobSpec, load_referenced_config, validate_job

log = logging.getLogger(__name__)

# The largest child the operator sends: Kubernetes keeps at most 1 MiB of data in a ConfigMap (and
# about 1.5 MiB per object in etcd); above that the apiserver refuses the request, every time.
MAX_CHILD_BYTES = 1 << 20


class ChildRefused(Exception):
    """A child that cannot be applied as built: the job fails with `reason` (or waits, when `wait`)."""

    def __init__(self, reason: str, problem: ConfigProblem, wait: bool = False):
        super().__init__(problem.message)
        self.reason = reason
        self.problem = problem
        self.wait = wait


@dataclass(frozen=True)
class Result:
    phase: str | None  # None: the job is gone
    requeue_after: float | None = None


class Reconciler:
    def __init__(self, kube: Kube, options: BuildOptions):
        self.kube = kube
        self.options = options
        # (namespace, name) -> hash of the children last applied by this process. Re-applying an
        # unchanged set is a no-op for the apiserver but still costs a request per child, and a busy
        # job is reconciled at every progress report; forget() drops an entry when a child vanishes.
        self._applied: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._applied.pop((namespace, name), None)

    def forget_all(self) -> None:
        with self._lock:
            self._applied.clear()

    def reconcile(self, namespace: str, name: str) -> Result:
        job = self.kube.get("FineTuneJob", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return Result(phase=None)
        ref = JobRef.of(job)
        pods = self.kube.list("Pod", namespace, builders.selector_labels(ref))
        observed, inputs = self._observe(job, ref, pods)
        decision = decide(observed)
        if decision.apply_children and inputs is not None:
            spec, config = inputs
            try:
                self._apply_children(ref, spec, config, decision.replicas)
            except ChildRefused as refused:
                if refused.wait:
                    decision = decide(replace(observed, waiting=(refused.reason, refused.problem.message)))
                else:
                    decision = decide(
                        replace(observed, problems=[refused.problem], problem_reason=refused.reason)
                    )
            except ApiError as error:
                if not error.invalid:
                    raise
                # The apiserver refused a child built from the spec (e.g. a malformed toleration):
                # only a spec change can fix that, so the job fails with the apiserver's words.
                problem = ConfigProblem("spec", error.message, "fix the field the message names")
                decision = decide(replace(observed, problems=[problem], problem_reason="InvalidSpec"))
        self._act(job, ref, pods, decision)
        return Result(phase=decision.status.get("phase"), requeue_after=decision.requeue_after)

    # --- observe ------------------------------------------------------------------------------------

    def _observe(
        self, job: dict, ref: JobRef, pods: list
    ) -> tuple[Observed, tuple[FineTuneJobSpec, dict[str, Any]] | None]:
        """What the job looks like now, and the valid spec and config its children are built from (None
        while it has none: invalid, waiting for its config, or finished)."""
        now = datetime.now(timezone.utc)
        validation = validate_job(job, self.options.policy)
        spec = validation.spec
        base = Observed(job=job, spec=spec, pods=pods, now=now, problems=validation.problems)
        if not validation.ok or spec is None or (job.get("status") or {}).get("phase") in FINAL:
            return base, None
        config: dict[str, Any] | None
        if validation.config is not None:
            config = validation.config.to_mapping()
        else:
            config, waiting, problems = self._referenced_config(ref, spec)
            if config is None:  # then problems or waiting say why
                return replace(base, problems=problems, waiting=waiting), None
        rendered = builders.render_config(ref, spec, config)
        outputs = builders.outputs_location(ref, spec, rendered)
        failure = self._create_failure(job, ref, spec, pods)
        progress, tracking, fetch = self._progress(ref)
        observed = replace(
            base,
            outputs=outputs,
            create_failure=failure,
            progress=progress,
            tracking=tracking,
            fetch=fetch,
        )
        return observed, (spec, config)

    def _progress(self, ref: JobRef) -> tuple[dict | None, list[dict[str, str]] | None, dict | None]:
        """Rank 0's latest report, its tracker runs and the fetch step's progress, from the job's own
        progress ConfigMap only."""
        found = self.kube.get("ConfigMap", ref.namespace, ref.progress_configmap)
        if found is None or not _controlled_by(found, ref):
            return None, None, None
        return (
            progress_report.read_report(found),
            progress_report.read_tracking(found),
            progress_report.read_fetch(found),
        )

    def _create_failure(self, job: dict, ref: JobRef, spec: FineTuneJobSpec, pods: list) -> str | None:
        """Why the StatefulSet controller cannot create the missing workers, read from its Events."""
        created = condition(job.get("status") or {}, "Created").get("status") == "True"
        if spec.suspend or not created or len(live_pods(pods)) >= spec.workers:
            return None
        events = self.kube.events_about(ref.namespace, "StatefulSet", ref.statefulset)
        return create_failure(events, parse_time(job["metadata"].get("creationTimestamp")))

    def _referenced_config(
        self, ref: JobRef, spec: FineTuneJobSpec
    ) -> tuple[dict | None, tuple[str, str] | None, list[ConfigProblem]]:
        """A configMapRef is read once: after the first start the job keeps its own rendered copy."""
        own = self.kube.get("ConfigMap", ref.namespace, ref.configmap)
        if own is not None and _owned_by(own, ref):
            rendered, problems = parse_yaml(own["data"][CONFIG_FILE], name=ref.configmap)
            if not problems and not isinstance(rendered, dict):  # emptied or rewritten by hand
                problems = [
                    ConfigProblem(
                        f"configMap {ref.configmap}",
                        "the job's own copy of its config holds no YAML mapping",
                        f"delete ConfigMap {ref.configmap}: the operator copies spec.configMapRef again",
                    )
                ]
            return (rendered, None, []) if not problems else (None, None, problems)
        source_ref = spec.configMapRef
        assert source_ref is not None  # validate_spec guarantees config or configMapRef
        source = self.kube.get("ConfigMap", ref.namespace, source_ref.name)
        text = ((source or {}).get("data") or {}).get(source_ref.key)
        if text is None:
            what = "ConfigMap" if source is None else f"key {source_ref.key!r} in ConfigMap"
            return None, ("ConfigMapNotFound", f"waiting for {what} {source_ref.name!r}"), []
        config, problems = load_referenced_config(text, f"{source_ref.name}/{source_ref.key}", spec)
        if config is None:
            return None, None, problems
        return config.to_mapping(), None, []

    # --- act ----------------------------------------------------------------------------------------

    def _apply_children(self, ref: JobRef, spec: FineTuneJobSpec, config: dict, replicas: int) -> None:
        objects = builders.children(ref, spec, config, replicas, self.options)
        digest = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()
        key = (ref.namespace, ref.name)
        with self._lock:
            if self._applied.get(key) == digest:
                return
        for obj in objects:
            _check_size(obj)
        for obj in objects:
            existing = self.kube.get(obj["kind"], ref.namespace, obj["metadata"]["name"])
            if existing is not None and not _controlled_by(existing, ref):
                if _retained_claim_of(existing, ref):
                    continue  # whenDeleted: Retain kept it for a job of this name: use it as it is
                _refuse_taken(existing, ref)
            self.kube.apply(obj)
        with self._lock:
            self._applied[key] = digest

    def _act(self, job: dict, ref: JobRef, pods: list, decision: Decision) -> None:
        # Pods go before the status write: should the write fail, the next reconcile sees the
        # replacement pods, not the old failure, so a restart is never counted twice.
        uids = {p["metadata"]["name"]: p["metadata"].get("uid") for p in pods}
        for pod in decision.delete_pods:
            self.kube.delete("Pod", ref.namespace, pod, uid=uids.get(pod))
        if decision.scale_to_zero:
            try:
                self.kube.scale("StatefulSet", ref.namespace, ref.statefulset, 0)
            except ApiError as error:
                if error.status != 404:
                    raise
            self.forget(ref.namespace, ref.name)
        patch = status_patch(job.get("status"), decision.status)
        if patch is not None:
            self.kube.patch_status(ref.namespace, ref.name, patch)
        for event in decision.events:
            log.info("%s/%s: %s: %s", ref.namespace, ref.name, event.reason, event.message)
            try:
                self.kube.post_event(job, event.type, event.reason, event.message)
            except ApiError as error:  # an event lost is not worth a retry of the whole reconcile
                log.warning(
                    "could not post event %s for %s/%s: %s", event.reason, ref.namespace, ref.name, error
                )
        if decision.delete_job:
            log.info("%s/%s: ttlSecondsAfterFinished passed; deleting the job", ref.namespace, ref.name)
            self.kube.delete("FineTuneJob", ref.namespace, ref.name, uid=ref.uid)
            self.forget(ref.namespace, ref.name)


def _owned_by(obj: dict, ref: JobRef) -> bool:
    return any(o.get("uid") == ref.uid for o in obj["metadata"].get("ownerReferences") or [])


def _controller(obj: dict) -> dict | None:
    return next((o for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")), None)


def _controlled_by(obj: dict, ref: JobRef) -> bool:
    return (_controller(obj) or {}).get("uid") == ref.uid


def _retained_claim_of(obj: dict, ref: JobRef) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return (
        obj.get("kind") == "PersistentVolumeClaim"
        and _controller(obj) is None
        and labels.get(JOB_LABEL) == ref.name
        and labels.get("app.kubernetes.io/managed-by") == builders.MANAGED_BY
    )


def _refuse_taken(existing: dict, ref: JobRef) -> None:
    """Never take over an object the job did not create: applying it would overwrite it and hand it to
    the garbage collector with the job."""
    kind, name = existing.get("kind", "object"), existing["metadata"]["name"]
    controller = _controller(existing) or {}
    if controller.get("kind") == "FineTuneJob" and controller.get("name") == ref.name:
        # A child of an earlier job of this name, which the garbage collector is about to remove.
        message = f"waiting for {kind} {name} of the previous job named {ref.name} to be deleted"
        raise ChildRefused("PreviousChildrenPresent", ConfigProblem("metadata.name", message), wait=True)
    owner = f" (controlled by {controller.get('kind')} {controller.get('name')})" if controller else ""
    problem = ConfigProblem(
        "metadata.name",
        f"{kind} {name} already exists and was not created for this job{owner}; the operator never takes "
        "over an existing object",
        f"rename the job, or delete or rename that {kind}",
    )
    raise ChildRefused("ChildNameTaken", problem)


def _check_size(obj: dict) -> None:
    size = len(json.dumps(obj, separators=(",", ":")))
    if size > MAX_CHILD_BYTES:
        kind, name = obj["kind"], obj["metadata"]["name"]
        problem = ConfigProblem(
            "spec.config" if kind == "ConfigMap" else "spec",
            f"the job's {kind} {name} would be {size} bytes; Kubernetes stores at most {MAX_CHILD_BYTES}",
            "make the config smaller (keep data out of it: point datasets at files)",
        )
        raise ChildRefused("ChildTooLarge", problem)
