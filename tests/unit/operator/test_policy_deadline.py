"""enforce_deadline (policies/deadline.py): runPolicy.activeDeadlineSeconds."""

import pytest

from tests.unit.operator.lifecycle_support import Job, pod


def test_deadline_fails_the_job_and_wakes_the_reconciler_in_time():
    j = Job(runPolicy={"activeDeadlineSeconds": 600})
    plan = j.step([pod(0), pod(1)])
    assert plan.requeue_after == pytest.approx(600)
    plan = j.step([pod(0), pod(1)], minutes=4)
    assert plan.requeue_after == pytest.approx(360)
    plan = j.step([pod(0), pod(1)], minutes=6)
    assert j.status["phase"] == "Failed" and j.status["reason"] == "DeadlineExceeded"
    assert plan.scale_to_zero
