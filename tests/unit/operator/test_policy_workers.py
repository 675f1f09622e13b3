"""report_workers (policies/workers.py): Pending, Fetching, Running as the pods go."""

from datetime import timedelta

from kubetune_operator.lifecycle import status_patch

from tests.unit.operator.lifecycle_support import NOW, Job, pod, stamp


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
