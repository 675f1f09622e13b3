"""enforce_deadline (policies/deadline.py): runPolicy.activeDeadlineSeconds."""

from datetime import timedelta

import pytest
from kubetune_operator.policies.deadline import enforce_deadline

from tests.unit.operator.lifecycle_support import NOW, Job, draft, pod, stamp


def test_deadline_fails_the_job_and_wakes_the_reconciler_in_time():
    j = Job(runPolicy={"activeDeadlineSeconds": 600})
    plan = j.step([pod(0), pod(1)])
    assert plan.requeue_after == pytest.approx(600)
    plan = j.step([pod(0), pod(1)], minutes=4)
    assert plan.requeue_after == pytest.approx(360)
    plan = j.step([pod(0), pod(1)], minutes=6)
    assert j.status["phase"] == "Failed" and j.status["reason"] == "DeadlineExceeded"
    assert plan.scale_to_zero


def test_enforce_deadline_wakes_before_and_fails_at_the_deadline():
    started = {"startTime": stamp(NOW - timedelta(seconds=100))}
    assert not enforce_deadline(draft(status=started))  # no deadline: nothing to time
    d = draft(status=started, spec={"runPolicy": {"activeDeadlineSeconds": 160}})
    assert not enforce_deadline(d) and d.decision.requeue_after == pytest.approx(60)
    d = draft(status=started, spec={"runPolicy": {"activeDeadlineSeconds": 100}})
    assert enforce_deadline(d) and d.new["reason"] == "DeadlineExceeded" and d.decision.scale_to_zero
