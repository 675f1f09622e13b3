"""The CPU smoke FineTuneJob (examples/finetune-cpu-smoke.yaml) trains for real on the local cluster.

The operator runs as a process (`kubetune-operator`, launching the real torchrun through `kubetune launch`), the example is
applied as a user would, and its two worker pods run the training engine over gloo: a tiny Llama,
LoRA, checkpoints, an adapter in the outputs volume. Three runs:

  * the example as written reaches Succeeded, with live progress in `kubectl get ftj` on the way;
  * a worker pod deleted after the first checkpoint: the group restarts and resumes from a checkpoint;
  * a config whose model directory does not exist exhausts backoffLimit and fails, saying why.

Outputs are read from the host directory backing the outputs claim and trainer logs from the local
node's kept pod logs, so the file and log checks need the local cluster (`kube_cluster.local`).
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from kubetune_operator.k8s import Kube

from tests.e2e.smoke import (
    Watch,
    events,
    example_documents,
    job_status,
    local_outputs,
    manifest,
    progress_lines,
    the_job,
    trainer_logs,
    with_namespace,
)
from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cluster_support import OperatorProcess, install_crd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "kt-e2e"
JOB = "cpu-smoke"
TIMEOUT = float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "600"))
# A Running row of `kubectl get ftj`: NAME PHASE PROGRESS STEP LOSS WORKERS FETCHED REASON AGE
RUNNING_ROW = re.compile(rf"^{JOB}\s+Running\s+(\d+)%\s+(\d+)\s+([0-9.]+)\s+2/2\s")
RESUMED_LINE = re.compile(r"resumed from \S*/checkpoint-(\d+) at step (\d+)")


@pytest.fixture(scope="module")
def operator(kube_cluster, tmp_path_factory):
    install_crd(kube_cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {"KUBETUNE_OPERATOR_TORCHRUN": "kubetune launch"}  # the real launcher, not the fake trainer
    if not kube_cluster.local:
        env["KUBETUNE_RUNTIME_IMAGE"] = TEST_IMAGE
    process = OperatorProcess(kube_cluster, log, namespaces=[f"{PREFIX}-*"], extra_env=env).start()
    yield process
    process.stop()
    print(f"operator log: {log}")


@pytest.fixture(scope="module")
def kube(kube_cluster):
    return Kube(kube_cluster.api_client())


@pytest.fixture
def ns(kube_cluster):
    name = kube_cluster.create_namespace(prefix=PREFIX)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _documents(ns: str, cluster) -> list[dict]:
    docs = with_namespace(example_documents(), ns)
    if not cluster.local:  # a real cluster pulls images: the setup Job needs the test's runtime image
        for doc in docs:
            if doc["kind"] == "Job":
                doc["spec"]["template"]["spec"]["containers"][0]["image"] = TEST_IMAGE
    return docs


def _wait_for_phase(kube, ns: str, *phases: str, timeout: float = TIMEOUT) -> dict:
    def reached():
        status = job_status(kube, ns, JOB)
        return status if status.get("phase") in phases else None

    return wait_for(reached, timeout, interval=1, what=f"FineTuneJob {ns}/{JOB} to reach {'/'.join(phases)}")


def _diagnostics(cluster, operator: OperatorProcess, ns: str) -> None:
    print("operator log (tail):\n" + operator.log_tail(80))
    print(cluster.kubectl("-n", ns, "get", "ftj,pods,jobs,pvc", "-o", "wide", check=False).stdout)
    print(cluster.kubectl("-n", ns, "get", "ftj", JOB, "-o", "yaml", check=False).stdout)
    if cluster.local:
        for pod in (f"{JOB}-0", f"{JOB}-1"):
            print(f"{pod} trainer log (tail):\n" + trainer_logs(cluster, ns, pod)[-4000:])


def _check_clean_finish(kube, ns: str, status: dict, steps: int) -> None:
    """Success went through Completing and recorded rank 0's termination message as the summary."""
    recorded = status["outputs"].get("summary")
    assert recorded and recorded["status"] == "completed" and recorded["steps"] == steps, (
        f"outputs.summary not filled from rank 0's termination message: {status['outputs']} ({status['message']})"
    )
    assert status["progress"]["loss"] == pytest.approx(recorded["final_train_loss"], abs=1e-4)
    assert "rank 0" not in status["message"], status["message"]  # no grace-period / bad-exit fallback
    reasons = [reason for _, reason, _ in events(kube, ns, JOB)]
    assert "Completing" in reasons and "Succeeded" in reasons, reasons


def _check_no_sigterm(cluster, ns: str, after: re.Pattern | None = None) -> None:
    """Rank 0 exited on its own: no torchrun SIGTERM traceback in its trainer's log (from the last
    match of `after` on: a group restart legitimately stops the earlier run)."""
    log = trainer_logs(cluster, ns, f"{JOB}-0")
    if after is not None:
        starts = [m.start() for m in after.finditer(log)]
        assert starts, f"{after.pattern!r} not in rank 0's log"
        log = log[starts[-1] :]
    tail = log[-3000:]
    for marker in ("SignalException", "got signal: 15", "Traceback (most recent call last)"):
        assert marker not in log, f"rank 0's log has {marker!r} (killed while exiting?); tail:\n{tail}"


def _check_outputs(cluster, kube, ns: str, status: dict, steps: int) -> tuple[dict, object]:
    """The adapter, the summary and the checkpoints in the outputs volume; returns (summary, directory)."""
    out = local_outputs(cluster, kube, ns, f"{JOB}-outputs", status["outputs"]["outputDir"])
    print(f"outputs: {out}: {sorted(p.name for p in out.iterdir())}")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_summary.json",
                 "KUBETUNE_COMPLETE"):  # fmt: skip
        assert (out / name).is_file(), f"{name} missing from the outputs volume ({out})"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and sorted(adapter["target_modules"]) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys), keys[:5]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert summary["world_size"] == 2, "both worker pods must have trained (one rank each)"
    assert summary["adapter"] == "lora"
    return summary, out


def test_the_example_trains_to_succeeded_with_live_progress(kube_cluster, operator, kube, ns):
    docs = _documents(ns, kube_cluster)
    total = the_job(docs)["spec"]["config"]["max_steps"]
    watch = Watch(kube_cluster, ns).start()
    started = time.monotonic()
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest(docs))
        status = _wait_for_phase(kube, ns, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", f"the smoke job failed: {status.get('message')}"
        print(f"Succeeded {time.monotonic() - started:.1f}s after kubectl apply")
        time.sleep(1)  # the watch prints the last rows
        rows = watch.stop()

        # `kubectl get ftj` showed the run as it went: Running rows with a step between 0 and the end.
        running = [(int(m[2]), float(m[3])) for row in rows if (m := RUNNING_ROW.match(row))]
        midway = [step for step, _ in running if 0 < step < total]
        assert midway, f"no live progress in kubectl get ftj (rows: {rows})"

        progress = status["progress"]
        assert progress["completed"] is True and progress["step"] == progress["totalSteps"] == total
        assert status["restarts"] == 0 and progress["percent"] == "100%"
        assert status["outputs"]["volume"] == f"persistentvolumeclaim/{JOB}-outputs"
        assert status["outputs"]["outputDir"] == progress["outputDir"]
        # The operator waited for rank 0 to exit (Completing) before scaling to zero, so rank 0's
        # termination message became the summary, not the grace period's fallback.
        _check_clean_finish(kube, ns, status, total)

        if not kube_cluster.local:
            return
        summary, out = _check_outputs(kube_cluster, kube, ns, status, total)
        assert summary["resumed_from_step"] is None
        first_logged = summary["history"][0]["loss"]
        assert progress["loss"] == pytest.approx(summary["final_train_loss"], abs=1e-4)
        assert progress["loss"] < first_logged, (
            f"final loss {progress['loss']} is not below the first logged loss {first_logged}"
        )
        # The same figures in rank 0's own log lines.
        logged = [line for line in progress_lines(trainer_logs(kube_cluster, ns, f"{JOB}-0"))
                  if line["event"] == "train"]  # fmt: skip
        assert logged[0]["step"] == 1 and logged[0]["loss"] == pytest.approx(first_logged, abs=1e-4)
        assert logged[-1]["step"] == total
        _check_no_sigterm(kube_cluster, ns)
        for step in (25, 50, 75):
            assert (out / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").exists(), f"checkpoint-{step}"
        print(f"loss: first logged {first_logged:.4f} -> final {progress['loss']:.4f}; "
              f"{summary['train_seconds']}s of training, {summary['trained_tokens']} trained tokens")  # fmt: skip
    except BaseException:
        watch.stop()
        _diagnostics(kube_cluster, operator, ns)
        raise


def test_a_deleted_worker_restarts_the_group_from_its_last_checkpoint(kube_cluster, operator, kube, ns):
    docs = _documents(ns, kube_cluster)
    config = the_job(docs)["spec"]["config"]
    # Long enough that the deletion surely lands between the first checkpoint and the end.
    config.update(max_steps=200, save_steps=20)
    watch = Watch(kube_cluster, ns).start()
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest(docs))

        def checkpointed():
            status = job_status(kube, ns, JOB)
            assert status.get("phase") not in ("Failed", "Succeeded"), f"finished too early: {status}"
            return status if (status.get("progress") or {}).get("lastCheckpoint") else None

        before = wait_for(checkpointed, TIMEOUT, interval=0.5, what="the first checkpoint")
        checkpoint_step = int(before["progress"]["lastCheckpoint"].rsplit("-", 1)[-1])
        print(
            f"deleting {JOB}-1 at step {before['progress']['step']} (last checkpoint: step {checkpoint_step})"
        )
        kube_cluster.kubectl("-n", ns, "delete", "pod", f"{JOB}-1", "--wait=false")

        status = _wait_for_phase(kube, ns, "Succeeded", "Failed")
        watch.stop()
        assert status["phase"] == "Succeeded", (
            f"the job did not survive the deletion: {status.get('message')}"
        )
        # The deleted worker checkpoints on SIGTERM and exits 143: a preemption, which restarts the
        # group without counting against backoffLimit (a peer's crash in the same round would count).
        print(f"restarts {status['restarts']}, preemptions {status.get('preemptions', 0)}")
        assert status["restarts"] + status.get("preemptions", 0) >= 1
        reasons = [(kind, reason) for kind, reason, _ in events(kube, ns, JOB)]
        assert ("Warning", "Preempted") in reasons or ("Warning", "Restarting") in reasons, reasons

        resumed = status["progress"].get("resumedFromStep")
        assert resumed is not None and checkpoint_step <= resumed < 200, (
            f"resumedFromStep {resumed}: the group should resume from checkpoint {checkpoint_step} or later"
        )
        assert status["progress"]["completed"] is True and status["progress"]["step"] == 200
        _check_clean_finish(kube, ns, status, 200)

        if not kube_cluster.local:
            return
        log = trainer_logs(kube_cluster, ns, f"{JOB}-0")
        found = [(int(a), int(b)) for a, b in RESUMED_LINE.findall(log)]
        assert (resumed, resumed) in found, f"rank 0 never logged resuming from step {resumed}: {found}"
        # Under `kubetune launch` the SIGTERM reached the workers, which saved their step before exiting
        # 143: the group resumed from exactly that step.
        preempted = [line["step"] for line in progress_lines(log) if line["event"] == "preempted"]
        assert preempted and resumed == preempted[-1], f"preempted at {preempted}, resumed from {resumed}"
        summary, out = _check_outputs(kube_cluster, kube, ns, status, 200)
        assert summary["resumed_from_step"] == resumed
        _check_no_sigterm(kube_cluster, ns, after=RESUMED_LINE)
        assert (out / "checkpoints" / f"checkpoint-{resumed}" / "COMPLETE").exists()
        print(
            f"resumed from step {resumed} after {status['restarts']} restart(s); final loss {summary['final_train_loss']:.4f}"
        )
    except BaseException:
        watch.stop()
        _diagnostics(kube_cluster, operator, ns)
        raise


def test_bad_input_fails_at_once_without_spending_the_backoff_limit(kube_cluster, operator, kube, ns):
    job = the_job(_documents(ns, kube_cluster))
    spec = job["spec"]
    # The job alone, without the setup it waits for, and a model directory that never exists: the
    # trainer exits with "bad input" (exit 2; torchrun exits 1, the termination message says 2), which
    # no restart can fix: the job fails at once, with the trainer's reason.
    spec.pop("volumes"), spec.pop("volumeMounts")
    spec["env"] = [e for e in spec["env"] if "valueFrom" not in e]
    spec["config"]["base_model"] = "/nonexistent/kubetune-e2e/model"
    spec["runPolicy"] = {"backoffLimit": 3}
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
        status = _wait_for_phase(kube, ns, "Failed", "Succeeded")
        assert status["phase"] == "Failed"
        assert status["reason"] == "InvalidInput" and status["restarts"] == 0
        message = status["message"]
        print(f"Failed: {status['reason']}: {message}")
        assert "exited with code 2" in message and "not retried" in message
        assert "/nonexistent/kubetune-e2e/model" in message and "does not exist" in message, (
            "the failure should say which path is missing"
        )
        failed = {c["type"]: c for c in status["conditions"]}["Failed"]
        assert failed["status"] == "True" and failed["reason"] == "InvalidInput"
        wait_for(lambda: kube.get("StatefulSet", ns, JOB)["spec"]["replicas"] == 0, 60, what="scaled to zero")
        assert ("Warning", "InvalidInput") in [(k, r) for k, r, _ in events(kube, ns, JOB)]
    except BaseException:
        _diagnostics(kube_cluster, operator, ns)
        raise
