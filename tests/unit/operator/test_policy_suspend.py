"""suspend (policies/suspend.py): spec.suspend."""

from kubetune_operator.policies.suspend import suspend

from tests.unit.operator.lifecycle_support import Job, draft, pod, stamp


def test_suspend_scales_to_zero_and_resume_restarts_the_deadline_clock():
    j = Job(runPolicy={"activeDeadlineSeconds": 600})
    j.step([pod(0), pod(1)])
    j.body["spec"]["suspend"] = True
    plan = j.step([pod(0), pod(1)], minutes=5)
    assert (plan.apply_children, plan.replicas) == (True, 0)
    assert j.status["phase"] == "Suspended" and "startTime" not in j.status
    assert j.condition("Suspended")["status"] == "True" and [e.reason for e in plan.events] == ["Suspended"]
    j.step([], minutes=60)
    j.body["spec"]["suspend"] = False
    plan = j.step([])
    assert (plan.apply_children, plan.replicas) == (True, 2) and j.status["phase"] == "Pending"
    assert j.status["startTime"] == stamp(j.now) and j.condition("Suspended")["status"] == "False"
    assert "Resumed" in [e.reason for e in plan.events]


def test_a_job_created_suspended_never_starts_its_clock():
    j = Job(suspend=True)
    plan = j.step()
    assert j.status["phase"] == "Suspended" and plan.replicas == 0 and "startTime" not in j.status
    assert j.condition("Created")["status"] == "True" and [e.reason for e in plan.events] == ["Suspended"]


def test_suspend_settles_only_a_suspended_job():
    assert not suspend(draft([pod(0), pod(1)]))
    d = draft([pod(0), pod(1)], spec={"suspend": True}, status={"phase": "Running", "startTime": "t"})
    assert suspend(d)
    assert (d.decision.apply_children, d.decision.replicas) == (True, 0)
    assert d.new["phase"] == "Suspended" and "startTime" not in d.new and d.new["workers"] == "2/0"
