"""handle_failure (policies/backoff.py): restarts, backoffLimit, preemption, bad input."""

from kubetune_operator.policies.backoff import handle_failure

from tests.unit.operator.lifecycle_support import Job, draft, fetching_pod, pod

# The worker's own exit code, from the termination message its first process writes (under torchrun
# the container exits 1 whatever the worker returned).
BAD_INPUT = '{"status": "bad_input", "exit_code": 2, "reason": "base_model: /models/x is not a directory"}'


PREEMPTED = '{"status": "preempted", "steps": 40, "exit_code": 143}'


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


def test_a_long_crash_log_is_cut_to_its_last_lines():
    log = (
        "\n".join(f"line {i}" for i in range(100))
        + "\nTraceback (most recent call last):\nValueError: bad shape\n"
    )
    j = Job(runPolicy={"backoffLimit": 0})
    j.step([pod(0, exit_code=1, message=log)])
    assert j.status["message"].startswith("worker demo-0 exited with code 1: line 99 | Traceback")
    assert "ValueError: bad shape" in j.status["message"] and "line 98" not in j.status["message"]


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


def test_handle_failure_lets_healthy_workers_through_and_restarts_the_group_on_a_crash():
    assert not handle_failure(draft([pod(0), pod(1)]))
    d = draft([pod(0), pod(1, exit_code=1, message="boom")])
    assert handle_failure(d)
    assert d.decision.delete_pods == ["demo-0", "demo-1"] and d.new["restarts"] == 1
    assert d.new["reason"] == "Restarting" and d.new["workers"] == "0/2"


def test_handle_failure_fails_at_once_on_a_source_that_cannot_be_fetched():
    missing = '{"status": "bad_input", "exit_code": 2, "reason": "fetch: base_model: repository not found"}'
    crashed = fetching_pod(
        0, state={"waiting": {"reason": "CrashLoopBackOff"}}, last={"exitCode": 2, "message": missing}
    )
    d = draft([crashed, fetching_pod(1)])
    assert handle_failure(d)
    assert d.new["reason"] == "FetchFailed" and "repository not found" in d.new["message"]
    assert d.decision.delete_pods == [] and d.decision.scale_to_zero and d.new["restarts"] == 0
