"""Thin kopf handlers: every watch event only says "look at this job again".

Why watch events and not kopf's create/update/resume handlers with timers: those keep per-object
progress and a diff base in the object, and timers put a finalizer on it, so deleting a job would
hang while the operator is down. Watch-event handlers keep no state in the object at all: the
operator's only write to a FineTuneJob is its status (GitOps tools see no drift), and deletion
never waits for the operator. Deadlines and TTLs are wake-ups in the work queue instead of kopf
timers; after a restart the initial listing wakes every job again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubetune_operator import metrics
from kubetune_operator.builders import JOB_LABEL, MANAGED_BY
from kubetune_operator.reconcile import Reconciler
from kubetune_operator.spec import GROUP, PLURAL, VERSION
from kubetune_operator.workqueue import WorkQueue

CHILD_SELECTOR = {"app.kubernetes.io/managed-by": MANAGED_BY}
RESYNC_SECONDS = 300.0

Key = tuple[str, str]


@dataclass
class OperatorState:
    """What the handlers share; kopf hands it to each of them as `memo.state`."""

    reconciler: Reconciler
    workers: int = 8
    queue: WorkQueue | None = None
    phases: metrics.PhaseBook = field(default_factory=metrics.PhaseBook)
    # key -> what last woke a reconcile (see job_changed); also the set of jobs to resync.
    seen: dict[Key, str] = field(default_factory=dict)
    resync_task: asyncio.Task | None = None

    def reconcile(self, key: Key) -> float | None:
        result = self.reconciler.reconcile(*key)
        self.phases.set(key, result.phase)
        if result.phase is None:  # the job is gone (a late pod event may have woken us)
            self.seen.pop(key, None)
        return result.requeue_after

    def touch(self, key: Key) -> None:
        assert self.queue is not None, "the startup handler creates the queue"
        self.queue.add(key)

    def job_changed(self, key: Key, body: Any) -> None:
        """Reconcile unless the change is only the operator's own status write.

        Every status write comes back as a watch event; reconciling it would cost API reads and
        find nothing to do. What can change a decision is the spec (generation) and deletion; rank
        0's progress arrives through its ConfigMap (progress_event).
        """
        meta = body.get("metadata", {})
        fingerprint = json.dumps(
            [meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp")], sort_keys=True
        )
        if self.seen.get(key) != fingerprint:
            self.seen[key] = fingerprint
            self.touch(key)

    def gone(self, key: Key) -> None:
        self.seen.pop(key, None)
        self.phases.set(key, None)
        self.reconciler.forget(*key)
        if self.queue is not None:
            self.queue.forget(key)

    async def resync(self) -> None:
        """Now and then, re-apply every job's children (repairs a child someone deleted or edited)."""
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            self.reconciler.forget_all()
            for key in list(self.seen):
                self.touch(key)


def register(registry: kopf.OperatorRegistry) -> None:
    # A registry of our own has none of kopf's default handlers: log in as the kubernetes client does
    # (the pod's service account in a cluster, else the current KUBECONFIG).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(memo: Any, **_: Any) -> None:
        state: OperatorState = memo.state
        state.queue = WorkQueue(
            state.reconcile, workers=state.workers, on_done=lambda _k, s, e: metrics.observe_reconcile(s, e)
        )
        state.queue.start()
        state.resync_task = asyncio.create_task(state.resync(), name="resync")

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: Any, **_: Any) -> None:
        state: OperatorState = memo.state
        if state.resync_task is not None:
            state.resync_task.cancel()
        if state.queue is not None:
            await state.queue.stop()

    @kopf.on.probe(id="queue", registry=registry)
    def queue_depth(memo: Any, **_: Any) -> int:
        return len(memo.state.queue or ())

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def job_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if type == "DELETED":
            memo.state.gone(key)
        else:
            memo.state.job_changed(key, body)

    @kopf.on.event("v1", "pods", labels=CHILD_SELECTOR, registry=registry)
    async def pod_event(body: Any, memo: Any, **_: Any) -> None:
        job = body["metadata"].get("labels", {}).get(JOB_LABEL)
        if job:
            memo.state.touch((body["metadata"]["namespace"], job))

    @kopf.on.event("v1", "configmaps", labels=CHILD_SELECTOR, registry=registry)
    async def progress_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
        # Rank 0 rewrote its progress ConfigMap (or someone touched a job's config): look again.
        job = body["metadata"].get("labels", {}).get(JOB_LABEL)
        if job and type != "DELETED":
            memo.state.touch((body["metadata"]["namespace"], job))

    @kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_SELECTOR, registry=registry)
    async def statefulset_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
        # Only a deleted StatefulSet matters (its status is not used: pods say more, sooner). Someone
        # removed it: apply the children again instead of trusting the cache.
        job = body["metadata"].get("labels", {}).get(JOB_LABEL)
        if job and type == "DELETED":
            memo.state.reconciler.forget(body["metadata"]["namespace"], job)
            memo.state.touch((body["metadata"]["namespace"], job))
