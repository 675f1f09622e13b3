"""Drive the lifecycle as the API would: a FineTuneJob whose status evolves by applying each decision.

Shared by the lifecycle policy tests (test_policy_*.py).
"""

from datetime import datetime, timedelta, timezone

from kubetune_operator.lifecycle import Observed, decide, status_patch
from kubetune_operator.policies.draft import Draft
from kubetune_operator.spec import validate_job

from tests.unit.operator.cases import job

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(index, *, running=True, exit_code=None, last_exit=None, message="", deleting=False, waiting=None,
        phase=None, name="demo"):  # fmt: skip
    state = {"running": {}} if running else {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message}}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": "pull access denied"}}
    status = {
        "name": "trainer",
        "state": state,
        "lastState": {"terminated": {"exitCode": last_exit, "message": message}}
        if last_exit is not None
        else {},
    }
    meta = {
        "name": f"{name}-{index}",
        "uid": f"uid-{index}",
        "labels": {"apps.kubernetes.io/pod-index": str(index)},
    }
    if deleting:
        meta["deletionTimestamp"] = stamp(NOW)
    return {
        "metadata": meta,
        "status": {"phase": phase or ("Running" if running else "Pending"), "containerStatuses": [status]},
    }


def fetching_pod(index, *, state=None, last=None):
    """A worker pod whose fetch init container is in `state` (trainer not started yet)."""
    p = pod(index, running=False)
    p["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
    p["status"]["initContainerStatuses"] = [
        {
            "name": "fetch",
            "state": state or {"running": {}},
            "lastState": {"terminated": last} if last else {},
        }
    ]
    return p


class Job:
    """A FineTuneJob whose status evolves by applying each decision, as the API would."""

    def __init__(self, **spec):
        self.body = job(**spec)
        self.body["metadata"].update(uid="u-1", generation=1)
        self.now = NOW
        self.report = None  # what rank 0 last wrote into its progress ConfigMap
        self.fetch = None  # what the fetch step last wrote there (sanitized, as the reconciler reads it)

    def step(self, pods=(), progress=None, minutes=0, body=None, fetch=None):
        self.now = self.now + timedelta(minutes=minutes)
        if progress is not None:
            self.report = progress
        if fetch is not None:
            self.fetch = fetch
        source = body or self.body
        validation = validate_job(source)
        plan = decide(Observed(job=source, spec=validation.spec, pods=list(pods), now=self.now,
                               problems=validation.problems, progress=self.report, fetch=self.fetch,
                               outputs={"outputDir": "/var/lib/kubetune/outputs/demo-u-1", "volume": "emptyDir"}))  # fmt: skip
        patch = status_patch(self.body.get("status"), plan.status)
        if patch:
            status = self.body.setdefault("status", {})
            for key, value in patch.items():
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = value
        return plan

    @property
    def status(self):
        return self.body["status"]

    def condition(self, kind):
        return next(c for c in self.status["conditions"] if c["type"] == kind)


def draft(pods=(), status=None, now=NOW, **observed):
    """A policy's input on its own: a valid two-worker job with `status`, observing `pods`.

    `observed` sets Observed's other fields (progress, waiting, problems, ...); `spec=` a dict of spec
    changes applied before validation.
    """
    body = job(**observed.pop("spec", {}))
    body["metadata"].update(uid="u-1", generation=1)
    if status is not None:
        body["status"] = status
    return Draft(Observed(job=body, spec=validate_job(body).spec, pods=list(pods), now=now, **observed))
