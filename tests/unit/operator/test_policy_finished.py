"""keep_finished (policies/finished.py) and the TTL of a finished job."""

import pytest
from kubetune_operator.policies.finished import keep_finished

from tests.unit.operator.lifecycle_support import Job, draft, pod


def test_a_finished_job_stays_finished_and_keeps_workers_at_zero():
    j = Job()
    j.step([pod(0), pod(1)], progress={"completed": True})
    j.step([pod(0, last_exit=0, message='{"steps": 1}'), pod(1)])
    assert j.status["phase"] == "Succeeded"
    # A restarted worker of the finished job exits 0 at once; its pod must not bring the job back.
    plan = j.step([pod(0, last_exit=0), pod(1, exit_code=1)])
    assert j.status["phase"] == "Succeeded" and plan.scale_to_zero and not plan.apply_children
    assert plan.events == [] and plan.delete_pods == []
    plan = j.step([])
    assert not plan.scale_to_zero


def test_ttl_after_finished_deletes_the_job():
    j = Job(runPolicy={"ttlSecondsAfterFinished": 300})
    j.step([pod(0)], progress={"completed": True})
    plan = j.step([pod(0, last_exit=0)])
    assert plan.requeue_after == pytest.approx(300) and not plan.delete_job
    plan = j.step([], minutes=4)
    assert plan.requeue_after == pytest.approx(60)
    assert j.step([], minutes=1).delete_job


def test_keep_finished_settles_only_a_final_job_and_leaves_its_status_as_it_was():
    assert not keep_finished(draft([pod(0)], status={"phase": "Running"}))
    created = {"type": "Created", "status": "True"}
    old = {"phase": "Failed", "reason": "DeadlineExceeded", "conditions": [created], "observedGeneration": 0}
    d = draft([pod(0, exit_code=1)], status=old)
    assert keep_finished(d)
    assert d.new["phase"] == "Failed" and d.new["reason"] == "DeadlineExceeded"
    assert d.new["observedGeneration"] == 0  # a final job does not claim to have seen a newer spec
    assert d.decision.scale_to_zero and not d.decision.apply_children and d.decision.events == []
