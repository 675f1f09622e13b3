"""activate (policies/activate.py): the children, startTime, Resumed, shared-storage warnings."""

import pytest
from kubetune_operator.policies.activate import activate
from kubetune_operator.spec import validate_job

from tests.unit.operator.cases import job
from tests.unit.operator.lifecycle_support import NOW, Job, draft, stamp


def test_workers_on_one_read_write_once_claim_are_admitted_with_a_warning():
    rwo = {"claimTemplate": {"size": "1Gi"}}  # the default access mode: ReadWriteOnce
    plan = Job(storage=rwo).step()
    assert [e.reason for e in plan.events] == ["Created", "SharedReadWriteOnce"]
    assert "only on one node" in plan.events[1].message
    rwx = {"claimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}
    assert [e.reason for e in Job(storage=rwx).step().events] == ["Created"]
    assert [e.reason for e in Job(workers=1, storage=rwo).step().events] == ["Created"]


@pytest.mark.parametrize(
    ("storage", "path"),
    [
        (None, "spec.storage"),
        ({"volume": {"emptyDir": {}}}, "spec.storage.volume.emptyDir"),
        ({"claimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteOncePod"]}},
         "spec.storage.claimTemplate.accessModes"),
    ],
)  # fmt: skip
def test_workers_on_storage_no_other_pod_sees_are_refused_with_the_fix(storage, path):
    body = job(workers=2)
    body["spec"]["storage"] = storage
    if storage is None:
        del body["spec"]["storage"]
    (problem,) = validate_job(body).problems
    assert problem.path == path and "ReadWriteMany" in problem.fix and "workers: 1" in problem.fix
    assert validate_job(job(workers=1)).ok  # one worker on its emptyDir is fine


def test_activate_schedules_every_worker_keeps_the_start_time_and_never_settles():
    d = draft()
    assert not activate(d)
    assert (d.decision.apply_children, d.decision.replicas) == (True, 2) and d.new["startTime"] == stamp(NOW)
    old = {"phase": "Running", "startTime": "2026-05-01T11:00:00Z", "completionTime": "stale",
           "conditions": [{"type": "Created", "status": "True"}]}  # fmt: skip
    d = draft(status=old)
    assert not activate(d)
    assert d.new["startTime"] == "2026-05-01T11:00:00Z" and "completionTime" not in d.new
    assert d.decision.events == []  # children already created: no second Created event
