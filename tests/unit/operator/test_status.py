from datetime import datetime, timedelta, timezone

import pytest
from kubetune_operator.spec import validate_job
from kubetune_operator.status import Observed, decide, status_patch

from tests.unit.operator.cases import bad_job, job

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


class Job:
    """A FineTuneJob whose status evolves by applying each plan, as the API would."""

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


def test_progress_reports_are_copied_into_the_status():
    # Rank 0 writes its ConfigMap; the operator copies the report: one status write per report.
    j = Job()
    j.step([pod(0), pod(1)])
    plan = j.step([pod(0), pod(1)], progress={"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5})
    assert status_patch(j.status, plan.status) is None and plan.events == []
    assert "progressPercent" not in j.status
    assert j.status["progress"] == {"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5}


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


def test_failure_restarts_the_group_until_backoff_limit():
    j = Job(runPolicy={"backoffLimit": 2})
    j.step([pod(0), pod(1)])
    crashed = [pod(0), pod(1, last_exit=1, message="CUDA error: out of memory")]
    plan = j.step(crashed)
    assert plan.delete_pods == ["demo-0", "demo-1"]
    assert j.status["restarts"] == 1 and j.status["phase"] == "Pending"
    assert plan.events[0].type == "Warning" and plan.events[0].reason == "Restarting"
    assert "demo-1 exited with code 1: CUDA error: out of memory" in plan.events[0].message

    # The deleted pods are going; their replacements start: no second count for the same failure.
    plan = j.step([pod(0, deleting=True, last_exit=1), pod(1, deleting=True, exit_code=143)])
    assert plan.delete_pods == [] and j.status["restarts"] == 1
    j.step([pod(0), pod(1)])
    assert j.status["phase"] == "Running"

    j.step([pod(0, exit_code=1, message="boom")])
    assert j.status["restarts"] == 2 and j.status["phase"] == "Pending"
    plan = j.step([pod(0, last_exit=1, message="Traceback: ValueError")])
    assert j.status["phase"] == "Failed" and j.status["reason"] == "BackoffLimitExceeded"
    assert "exited with code 1: Traceback: ValueError" in j.status["message"]
    assert plan.scale_to_zero and plan.delete_pods == []
    assert j.condition("Failed")["reason"] == "BackoffLimitExceeded"


def test_backoff_limit_zero_fails_at_the_first_crash():
    j = Job(runPolicy={"backoffLimit": 0})
    j.step([pod(0, exit_code=1)])
    assert j.status["phase"] == "Failed" and j.status["restarts"] == 0


def test_a_worker_killed_for_its_memory_limit_is_reported_oomkilled():
    j = Job(runPolicy={"backoffLimit": 0})
    killed = pod(0, exit_code=137, message="step 3/10")
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    j.step([killed])
    assert j.status["phase"] == "Failed"
    assert "demo-0 was OOMKilled (over its memory limit; exit code 137): step 3/10" in j.status["message"]


def test_a_pod_the_kubelet_failed_counts_as_a_failure():
    j = Job()
    plan = j.step([pod(0, running=False, phase="Failed")])
    assert plan.delete_pods == ["demo-0"] and j.status["restarts"] == 1


def test_stuck_pods_are_explained_once():
    j = Job()
    plan = j.step([pod(0, running=False, waiting="ImagePullBackOff"), pod(1)])
    assert j.status["reason"] == "WorkersBlocked" and "ImagePullBackOff" in j.status["message"]
    assert [e.reason for e in plan.events] == ["Created", "WorkersBlocked"]
    assert j.step([pod(0, running=False, waiting="ImagePullBackOff"), pod(1)]).events == []


def test_deadline_fails_the_job_and_wakes_the_reconciler_in_time():
    j = Job(runPolicy={"activeDeadlineSeconds": 600})
    plan = j.step([pod(0), pod(1)])
    assert plan.requeue_after == pytest.approx(600)
    plan = j.step([pod(0), pod(1)], minutes=4)
    assert plan.requeue_after == pytest.approx(360)
    plan = j.step([pod(0), pod(1)], minutes=6)
    assert j.status["phase"] == "Failed" and j.status["reason"] == "DeadlineExceeded"
    assert plan.scale_to_zero


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


def test_ttl_after_finished_deletes_the_job():
    j = Job(runPolicy={"ttlSecondsAfterFinished": 300})
    j.step([pod(0)], progress={"completed": True})
    plan = j.step([pod(0, last_exit=0)])
    assert plan.requeue_after == pytest.approx(300) and not plan.delete_job
    plan = j.step([], minutes=4)
    assert plan.requeue_after == pytest.approx(60)
    assert j.step([], minutes=1).delete_job


def test_invalid_config_fails_with_the_validation_report_and_builds_nothing():
    j = Job()
    j.body = bad_job("misspelt-key", name="demo")
    j.body["metadata"].update(uid="u-1", generation=1)
    plan = j.step()
    assert not plan.apply_children and not plan.scale_to_zero and plan.delete_pods == []
    assert j.status["phase"] == "Failed" and j.status["reason"] == "InvalidConfig"
    assert "spec.config.lerning_rate" in j.status["message"] and "learning_rate" in j.status["message"]
    assert j.condition("Failed")["message"] == j.status["message"]
    assert [e.type for e in plan.events] == ["Warning"]
    assert "Created" not in [c["type"] for c in j.status["conditions"]]


def test_waiting_for_a_config_map():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    body["metadata"].update(uid="u", generation=1)
    validation = validate_job(body)
    plan = decide(Observed(job=body, spec=validation.spec, pods=[], now=NOW,
                           waiting=("ConfigMapNotFound", "waiting for ConfigMap 'cfg'")))  # fmt: skip
    assert not plan.apply_children and plan.requeue_after == pytest.approx(10)
    assert plan.status["phase"] == "Pending" and plan.status["reason"] == "ConfigMapNotFound"


def test_status_patch_removes_dropped_keys():
    old = {"phase": "Running", "startTime": "x", "progress": {"step": 3}}
    assert status_patch(old, {"phase": "Suspended", "progress": {"step": 3}}) == {
        "phase": "Suspended",
        "startTime": None,
    }
    assert status_patch(old, {"phase": "Running", "startTime": "x", "progress": {"step": 3}}) is None


def test_a_long_crash_log_is_cut_to_its_last_lines():
    log = (
        "\n".join(f"line {i}" for i in range(100))
        + "\nTraceback (most recent call last):\nValueError: bad shape\n"
    )
    j = Job(runPolicy={"backoffLimit": 0})
    j.step([pod(0, exit_code=1, message=log)])
    assert j.status["message"].startswith("worker demo-0 exited with code 1: line 99 | Traceback")
    assert "ValueError: bad shape" in j.status["message"] and "line 98" not in j.status["message"]


# The worker's own exit code, from the termination message its first process writes (under torchrun
# the container exits 1 whatever the worker returned).
BAD_INPUT = '{"status": "bad_input", "exit_code": 2, "reason": "base_model: /models/x is not a directory"}'
PREEMPTED = '{"status": "preempted", "steps": 40, "exit_code": 143}'


def test_bad_input_fails_at_once_with_the_workers_message():
    j = Job(runPolicy={"backoffLimit": 3})
    j.step([pod(0), pod(1)])
    plan = j.step([pod(0, exit_code=1, message=BAD_INPUT), pod(1)])
    assert j.status["phase"] == "Failed" and j.status["reason"] == "InvalidInput"
    assert j.status["restarts"] == 0 and plan.scale_to_zero
    assert "worker demo-0 exited with code 2: base_model: /models/x is not a directory" in j.status["message"]
    # Without torchrun the container's own code says it.
    j = Job(runPolicy={"backoffLimit": 3})
    j.step([pod(0, exit_code=2, message="config error")])
    assert j.status["reason"] == "InvalidInput"


def test_preemption_after_a_checkpoint_does_not_count_against_backoff_limit():
    j = Job(runPolicy={"backoffLimit": 0})
    j.step([pod(0), pod(1)])
    for round_ in (1, 2):
        plan = j.step([pod(0, exit_code=1, message=PREEMPTED), pod(1, last_exit=143)])
        assert j.status["phase"] == "Pending" and j.status["reason"] == "Preempted"
        assert j.status["restarts"] == 0 and j.status["preemptions"] == round_
        assert plan.delete_pods == ["demo-0", "demo-1"] and plan.events[0].reason == "Preempted"
        j.step([pod(0), pod(1)])
        assert j.status["phase"] == "Running"
    # A real crash next to a preemption is a crash: counted (and here, past the limit).
    j.step([pod(0, exit_code=143), pod(1, exit_code=1, message="CUDA error")])
    assert j.status["phase"] == "Failed" and j.status["reason"] == "BackoffLimitExceeded"


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
