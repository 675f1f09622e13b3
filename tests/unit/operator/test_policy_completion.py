"""complete (policies/completion.py): success, and the Completing wait for rank 0's exit."""

from datetime import timedelta

import pytest
from kubetune_operator.policies.completion import COMPLETION_GRACE_SECONDS, complete

from tests.unit.operator.lifecycle_support import NOW, Job, draft, pod, stamp

DONE = {"step": 120, "totalSteps": 120, "completed": True, "outputDir": "/var/lib/kubetune/outputs/demo-u-1"}


def test_success_reported_by_rank_zero_waits_for_its_exit_then_records_the_summary():
    j = Job()
    j.step([pod(0), pod(1)])
    plan = j.step([pod(0), pod(1)], progress=DONE)
    # Rank 0 is still writing its summary and leaving torchrun: keep the workers, wake at the grace end.
    assert j.status["phase"] == "Running" and j.status["reason"] == "Completing"
    assert not plan.scale_to_zero and (plan.apply_children, plan.replicas) == (True, 2)
    assert (
        j.condition("Succeeded")["status"] == "False" and j.condition("Succeeded")["reason"] == "Completing"
    )
    assert j.condition("Succeeded")["lastTransitionTime"] == stamp(j.now)
    assert plan.requeue_after == pytest.approx(60) and "completionTime" not in j.status
    assert [e.reason for e in plan.events] == ["Completing"]

    # Rank 1 finishes first (a pod event wakes us): still waiting, no second event, a shorter wake-up.
    j.now += timedelta(seconds=10)
    plan = j.step([pod(0), pod(1, running=False, exit_code=0)])
    assert j.status["reason"] == "Completing" and not plan.scale_to_zero and plan.events == []
    assert plan.requeue_after == pytest.approx(50)

    # Rank 0 exited 0 and restarted (restartPolicy Always): its summary is in lastState.
    summary = '{"final_loss": 0.81, "steps": 120}'
    plan = j.step([pod(0, running=True, last_exit=0, message=summary), pod(1, last_exit=0)])
    assert j.status["phase"] == "Succeeded" and j.status["reason"] == "Completed"
    assert plan.scale_to_zero and not plan.apply_children
    assert j.status["outputs"] == {"outputDir": "/var/lib/kubetune/outputs/demo-u-1", "volume": "emptyDir",
                                   "summary": {"final_loss": 0.81, "steps": 120}}  # fmt: skip
    assert j.status["completionTime"] == stamp(j.now)
    assert j.condition("Succeeded")["status"] == "True" and j.condition("Running")["status"] == "False"
    assert [e.reason for e in plan.events] == ["Succeeded"]


def test_completing_ignores_the_deadline_and_other_workers_exits():
    j = Job(runPolicy={"activeDeadlineSeconds": 30, "backoffLimit": 0})
    j.step([pod(0), pod(1)])
    j.step([pod(0), pod(1)], progress=DONE)
    j.now += timedelta(seconds=40)  # past the deadline, within the grace period
    plan = j.step([pod(0), pod(1, running=False, exit_code=1)])
    assert j.status["reason"] == "Completing" and plan.delete_pods == [] and not plan.scale_to_zero


def test_completing_scales_to_zero_anyway_after_the_grace_period():
    j = Job()
    j.step([pod(0), pod(1)])
    j.step([pod(0), pod(1)], progress=DONE)
    j.now += timedelta(seconds=59)
    assert j.step([pod(0), pod(1)]).requeue_after == pytest.approx(1)
    j.now += timedelta(seconds=1)
    plan = j.step([pod(0), pod(1)])
    assert j.status["phase"] == "Succeeded" and plan.scale_to_zero
    assert "rank 0 had not exited 60s after reporting completion" in j.condition("Succeeded")["message"]
    assert "summary" not in j.status["outputs"]


def test_completing_ends_at_once_when_rank_zero_exits_non_zero_after_its_report():
    j = Job()
    j.step([pod(0), pod(1)])
    j.step([pod(0), pod(1)], progress=DONE)
    plan = j.step([pod(0, running=False, exit_code=143, message="SIGTERM"), pod(1)])
    assert j.status["phase"] == "Succeeded" and plan.scale_to_zero and plan.delete_pods == []
    assert "rank 0 exited with code 143 after reporting completion" in j.status["message"]


def test_the_summary_survives_a_silent_exit_of_the_restarted_trainer():
    # The restarted trainer finds KUBETUNE_COMPLETE and exits 0 with no message; the run's own exit
    # (with the summary) is then in lastState.
    j = Job()
    j.step([pod(0), pod(1)])
    j.step([pod(0), pod(1)], progress=DONE)
    silent_then_spoken = pod(0, running=False, exit_code=0, message="")
    silent_then_spoken["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"exitCode": 0, "message": '{"steps": 120}'}
    }
    j.step([silent_then_spoken, pod(1)])
    assert j.status["phase"] == "Succeeded" and j.status["outputs"]["summary"] == {"steps": 120}


def test_success_from_rank_zeros_exit_and_termination_message():
    j = Job()
    j.step([pod(0), pod(1)])
    summary = '{"final_loss": 0.81, "steps": 120}'
    j.step([pod(0, running=True, last_exit=0, message=summary), pod(1, last_exit=0)])
    assert j.status["phase"] == "Succeeded"
    assert j.status["outputs"]["summary"] == {"final_loss": 0.81, "steps": 120}


def test_complete_does_not_settle_a_training_still_running():
    assert not complete(draft([pod(0), pod(1)], progress={"step": 5, "totalSteps": 10}))
    d = draft([pod(0), pod(1)])
    d.new["progress"] = {"step": 10, "completed": True}
    assert complete(d) and d.new["reason"] == "Completing"
    assert d.decision.requeue_after == pytest.approx(COMPLETION_GRACE_SECONDS)


def test_the_grace_period_is_timed_from_the_completion_report_not_an_older_condition():
    # A Succeeded=False condition from before (here an operator version that wrote one) keeps its
    # old transition time unless Completing restamps it: the grace would then look already spent.
    earlier = {
        "type": "Succeeded",
        "status": "False",
        "reason": "Other",
        "lastTransitionTime": stamp(NOW - timedelta(hours=1)),
    }
    d = draft([pod(0), pod(1)], status={"phase": "Running", "conditions": [earlier]})
    d.new["progress"] = {"step": 10, "completed": True}
    assert complete(d)
    succeeded = next(c for c in d.conditions if c["type"] == "Succeeded")
    assert succeeded["reason"] == "Completing" and succeeded["lastTransitionTime"] == stamp(NOW)
