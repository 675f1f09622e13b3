"""report_workers (policies/workers.py): Pending, Fetching, Running as the pods go."""

from datetime import timedelta

import pytest
from kubetune_operator.lifecycle import status_patch
from kubetune_operator.policies.workers import MISSING_PODS_RECHECK_SECONDS, report_workers

from tests.unit.operator.lifecycle_support import NOW, Job, draft, fetching_pod, pod, stamp


def test_pending_then_running_as_the_pods_run():
    j = Job()
    plan = j.step()
    assert (plan.apply_children, plan.replicas) == (True, 2)
    assert j.status["phase"] == "Pending" and j.status["workers"] == "0/2"
    assert j.condition("Created")["status"] == "True" and j.status["startTime"] == stamp(NOW)
    assert [e.reason for e in plan.events] == ["Created"]

    plan = j.step([pod(0), pod(1, running=False)])
    assert j.status["phase"] == "Pending" and j.status["workers"] == "1/2" and plan.events == []

    plan = j.step([pod(0), pod(1)], minutes=1)
    assert j.status["phase"] == "Running" and j.status["workers"] == "2/2"
    assert j.condition("Running")["status"] == "True"
    assert j.condition("Running")["lastTransitionTime"] == stamp(NOW + timedelta(minutes=1))
    assert [e.reason for e in plan.events] == ["Running"]
    assert j.status["startTime"] == stamp(NOW)  # set once
    assert j.status["observedGeneration"] == 1

    # Nothing new observed: nothing to write.
    plan = j.step([pod(0), pod(1)])
    assert status_patch(j.status, plan.status) is None and plan.events == []


def test_stuck_pods_are_explained_once():
    j = Job()
    plan = j.step([pod(0, running=False, waiting="ImagePullBackOff"), pod(1)])
    assert j.status["reason"] == "WorkersBlocked" and "ImagePullBackOff" in j.status["message"]
    assert [e.reason for e in plan.events] == ["Created", "WorkersBlocked"]
    assert j.step([pod(0, running=False, waiting="ImagePullBackOff"), pod(1)]).events == []


def test_report_workers_always_settles_and_counts_the_running_workers():
    d = draft([pod(0), pod(1, running=False)])
    assert report_workers(d)
    assert d.new["phase"] == "Pending" and d.new["workers"] == "1/2" and d.decision.events == []
    d = draft([pod(0)])  # a pod missing: look again soon, nothing watches the StatefulSet's events
    assert report_workers(d) and d.decision.requeue_after == pytest.approx(MISSING_PODS_RECHECK_SECONDS)


def test_report_workers_says_fetching_while_the_fetch_step_runs():
    d = draft([fetching_pod(0), fetching_pod(1)])
    assert report_workers(d)
    assert d.new["phase"] == "Fetching" and d.new["message"] == "fetch step running in demo-0"
