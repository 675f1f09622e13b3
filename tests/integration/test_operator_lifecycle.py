"""The operator against the real local control plane: children, lifecycle, failures, restarts.

Pods run the fake trainer (tests/unit/operator/fake_trainer.py) instead of the training engine, so
these tests exercise the operator alone; training for real is the e2e tier's job.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cases import job

pytestmark = pytest.mark.integration

PREFIX = "ktop-life"  # the namespaces of this module's operator and jobs (conftest.py)
SELECTOR = "kubetune.dev/job-name"


# Several workers need outputs they all mount (refused otherwise); the local provisioner's claims
# live on the one node, so ReadWriteOnce is shared.
SHARED_OUTPUTS = {"claimTemplate": {"size": "1Gi", "storageClassName": "standard"}}


def fake_job(name, namespace, mode="run", workers=2, env=(), **spec):
    if workers > 1:
        spec.setdefault("storage", SHARED_OUTPUTS)
    body = job(name, namespace, workers=workers, image=TEST_IMAGE, **spec)
    body["spec"]["env"] = [{"name": "FAKE_MODE", "value": mode}, *env]
    body["spec"].setdefault("terminationGracePeriodSeconds", 2)
    return body


def apply(cluster, body):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def get_job(kube, namespace, name):
    return kube.get("FineTuneJob", namespace, name)


def phase_is(kube, namespace, name, *phases):
    found = get_job(kube, namespace, name)
    return found if found and found.get("status", {}).get("phase") in phases else None


def children(kube, namespace, name):
    return {
        kind: kube.list(kind, namespace, {SELECTOR: name})
        for kind in (
            "ConfigMap",
            "Service",
            "StatefulSet",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Pod",
            "PersistentVolumeClaim",
        )
    }


def live_pods(kube, namespace, name):
    return [
        p for p in kube.list("Pod", namespace, {SELECTOR: name}) if not p["metadata"].get("deletionTimestamp")
    ]


def events(kube, namespace, name):
    found = kube.request("GET", f"/api/v1/namespaces/{namespace}/events",
                         query={"fieldSelector": f"involvedObject.name={name}"})  # fmt: skip
    return [
        (e["type"], e["reason"])
        for e in sorted(found["items"], key=lambda e: e["metadata"]["creationTimestamp"])
    ]


def wait_for_events(kube, namespace, name, *wanted, timeout: float = 30):
    """The operator records an event after it writes the status it announces: wait for the events,
    never read them once right after the status (that raced in CI)."""
    return wait_for(lambda: (found := events(kube, namespace, name)) and all(w in found for w in wanted) and found,
                    timeout, what=f"events {wanted} of {name}")  # fmt: skip


def test_a_job_gets_its_children_and_runs(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("llama", ns))
    first = wait_for(lambda: phase_is(kube, ns, "llama", "Pending", "Running"), 30, what="status")
    made = wait_for(lambda: (c := children(kube, ns, "llama"))["StatefulSet"] and c, 30, what="children")
    job_uid = first["metadata"]["uid"]

    configmaps = {c["metadata"]["name"]: c for c in made["ConfigMap"]}
    assert set(configmaps) == {"llama-config", "llama-progress"}
    configmap = configmaps["llama-config"]
    rendered = yaml.safe_load(configmap["data"]["config.yaml"])
    assert rendered["output_dir"] == f"/var/lib/kubetune/outputs/llama-{job_uid[:8]}"
    assert rendered["lora_r"] == 16
    (service,) = made["Service"]
    assert service["metadata"]["name"] == "llama-workers"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    (sts,) = made["StatefulSet"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel" and sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == "llama-workers"
    owner = sts["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FineTuneJob",
        "llama",
        job_uid,
        True,
    )
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PET_RDZV_ENDPOINT"] == f"llama-0.llama-workers.{ns}.svc.cluster.local:29400"
    assert env["PET_NNODES"] == "2" and env["PET_RDZV_ID"] == job_uid
    assert [sa["metadata"]["name"] for sa in made["ServiceAccount"]] == ["llama-worker"]

    running = wait_for(lambda: phase_is(kube, ns, "llama", "Running"), 60, what="phase Running")
    status = running["status"]
    assert status["workers"] == "2/2" and status["restarts"] == 0 and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Running"] == "True"
    # The pods got the node rank from their pod-index label and found the config file.
    pods = sorted(live_pods(kube, ns, "llama"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods] == ["0", "1"]

    # Rank 0 reports progress through its own ConfigMap; the operator copies it into the status. (60 s: in
    # CI a report once timed out three times in a row, 10 s each, on the shared 2 cores; the trainer retries.)
    progressed = wait_for(lambda: (j := get_job(kube, ns, "llama"))["status"].get("progress", {}).get("step", 0) >= 2
                          and j["status"]["progress"].get("percent") and j, 60, what="progress")  # fmt: skip
    assert progressed["status"]["progress"]["totalSteps"] == 1000000
    table = kube_cluster.kubectl("get", "ftj", "-n", ns).stdout
    assert table.split()[:9] == [
        "NAME",
        "PHASE",
        "PROGRESS",
        "STEP",
        "LOSS",
        "WORKERS",
        "FETCHED",
        "REASON",
        "AGE",
    ], table
    assert "Running" in table and "2/2" in table
    wait_for_events(kube, ns, "llama", ("Normal", "Created"), ("Normal", "Running"))

    # GitOps-safe: no finalizer, no kopf annotations; the operator writes only status.
    meta = get_job(kube, ns, "llama")["metadata"]
    assert not meta.get("finalizers")
    assert not [k for k in (meta.get("annotations") or {}) if "kopf" in k]
    writers = {(m["manager"], m.get("subresource", "")) for m in meta["managedFields"]}
    assert ("kubetune-operator", "") not in writers and ("kubetune-operator", "status") in writers

    # A child removed by hand comes back (the same name, a new object).
    kube_cluster.kubectl("delete", "statefulset", "llama", "-n", ns, "--cascade=orphan")
    back = wait_for(lambda: (s := kube.get("StatefulSet", ns, "llama")) and s["metadata"]["uid"] != sts["metadata"]["uid"]
                    and s, 30, what="StatefulSet re-created")  # fmt: skip
    assert back["spec"]["replicas"] == 2

    metrics = operator.metrics()
    assert 'kubetune_finetunejobs{phase="Running"}' in metrics
    assert "kubetune_reconcile_duration_seconds_count" in metrics


def test_progress_rights_are_narrow(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("narrow", ns, workers=1))
    wait_for(lambda: children(kube, ns, "narrow")["RoleBinding"], 30, what="role binding")
    who = f"system:serviceaccount:{ns}:narrow-worker"

    def can(*args):
        return kube_cluster.kubectl("auth", "can-i", *args, "-n", ns, "--as", who, check=False).stdout.strip()

    # Only the job's progress ConfigMap: never the job or its status (the operator's bookkeeping).
    assert can("patch", "configmaps/narrow-progress") == "yes"
    assert can("patch", "configmaps/narrow-config") == "no"
    assert can("patch", "finetunejobs.kubetune.dev/narrow", "--subresource=status") == "no"
    assert can("patch", "finetunejobs.kubetune.dev/narrow") == "no"  # never the spec
    assert can("list", "pods") == "no"


def test_a_worker_crash_restarts_the_group_once(kube_cluster, operator, ns, kube):
    # The outputs claim outlives the pods: the crash marker (like a checkpoint) survives the restart.
    outputs = {"claimTemplate": {"size": "1Gi", "storageClassName": "standard"}}
    apply(kube_cluster, fake_job("crashy", ns, mode="crash-once-rank1", storage=outputs))
    wait_for(lambda: (j := get_job(kube, ns, "crashy")) and j.get("status", {}).get("restarts") == 1 and j,
             90, what="one group restart")  # fmt: skip
    wait_for(lambda: phase_is(kube, ns, "crashy", "Running"), 90, what="running again")
    (claim,) = kube.list("PersistentVolumeClaim", ns, {SELECTOR: "crashy"})
    assert (
        claim["metadata"]["name"] == "crashy-outputs"
        and claim["metadata"]["ownerReferences"][0]["name"] == "crashy"
    )
    time.sleep(5)  # the restarted group keeps running: no second crash, no second restart
    after = phase_is(kube, ns, "crashy", "Running")
    assert after is not None and after["status"]["restarts"] == 1
    reasons = [r for _, r in wait_for_events(kube, ns, "crashy", ("Warning", "Restarting"))]
    assert reasons.count("Restarting") == 1
    (message,) = [m for m in after["status"]["conditions"] if m["type"] == "Running"]
    assert message["status"] == "True"


def test_crashes_beyond_backoff_limit_fail_the_job(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("doomed", ns, mode="crash", workers=1, runPolicy={"backoffLimit": 1},
                                 env=[{"name": "FAKE_DELAY", "value": "0.5"}]))  # fmt: skip
    failed = wait_for(lambda: phase_is(kube, ns, "doomed", "Failed"), 120, what="Failed")
    status = failed["status"]
    assert status["reason"] == "BackoffLimitExceeded" and status["restarts"] == 1
    assert "exited with code 1" in status["message"] and "fake trainer crashed" in status["message"]
    wait_for(lambda: kube.get("StatefulSet", ns, "doomed")["spec"]["replicas"] == 0, 30, what="scaled to 0")
    wait_for_events(kube, ns, "doomed", ("Warning", "BackoffLimitExceeded"))


def test_a_worker_over_its_memory_limit_is_reported_oomkilled(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("hungry", ns, mode="oom", workers=1, runPolicy={"backoffLimit": 0},
                                 resources={"limits": {"memory": "256Mi"}}))  # fmt: skip
    failed = wait_for(lambda: phase_is(kube, ns, "hungry", "Failed"), 120, what="Failed")
    assert failed["status"]["reason"] == "BackoffLimitExceeded"
    assert "hungry-0 was OOMKilled (over its memory limit; exit code 137)" in failed["status"]["message"]


def test_success_records_outputs_scales_to_zero_and_ttl_deletes(kube_cluster, operator, ns, kube):
    # Rank 0 lingers 3 s between reporting completion and exiting, as the runtime does while it
    # writes its summary: the operator must wait for the exit, not scale rank 0 away mid-way.
    apply(kube_cluster, fake_job("quick", ns, mode="succeed", runPolicy={"ttlSecondsAfterFinished": 5},
                                 env=[{"name": "FAKE_STEPS", "value": "3"}, {"name": "FAKE_INTERVAL", "value": "0.5"},
                                      {"name": "FAKE_EXIT_DELAY", "value": "3"}]))  # fmt: skip
    completing = wait_for(lambda: (j := get_job(kube, ns, "quick")) and j.get("status", {}).get("reason")
                          in ("Completing", "Completed") and j, 90, what="completion reported")  # fmt: skip
    if completing["status"]["reason"] == "Completing":
        assert completing["status"]["phase"] == "Running"
        assert kube.get("StatefulSet", ns, "quick")["spec"]["replicas"] == 2
        wait_for_events(kube, ns, "quick", ("Normal", "Completing"))
    # else the operator learnt of the last report and of rank 0's exit together (the report goes through
    # the progress ConfigMap, one hop more than the exit): it went straight to Succeeded, no Completing.
    done = wait_for(lambda: phase_is(kube, ns, "quick", "Succeeded"), 90, what="Succeeded")
    status = done["status"]
    assert status["progress"]["percent"] == "100%" and status["completionTime"]
    assert status["outputs"]["outputDir"].startswith("/var/lib/kubetune/outputs/quick-")
    # The summary came from rank 0's termination message: it exited on its own, before the scale-down.
    assert status["outputs"]["summary"] == {"steps": 3, "final_loss": 0.6667,
                                            "output_dir": status["outputs"]["outputDir"]}  # fmt: skip
    assert "rank 0" not in status["message"], status["message"]  # not the grace period's fallback
    assert kube.get("StatefulSet", ns, "quick")["spec"]["replicas"] == 0
    wait_for(lambda: not live_pods(kube, ns, "quick"), 30, what="workers gone")
    # ttlSecondsAfterFinished: the job goes, and the garbage collector takes its children.
    wait_for(lambda: get_job(kube, ns, "quick") is None, 30, what="job deleted by TTL")
    wait_for(lambda: not any(children(kube, ns, "quick").values()), 60, what="children collected")


def test_suspend_and_resume(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("pausable", ns))
    started = wait_for(lambda: phase_is(kube, ns, "pausable", "Running"), 60, what="Running")
    kube_cluster.kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    suspended = wait_for(lambda: phase_is(kube, ns, "pausable", "Suspended"), 30, what="Suspended")
    assert "startTime" not in suspended["status"]
    wait_for(lambda: kube.get("StatefulSet", ns, "pausable")["spec"]["replicas"] == 0, 30, what="replicas 0")
    wait_for(lambda: not live_pods(kube, ns, "pausable"), 30, what="pods gone")
    # Where pods run may change while suspended; what the run is may not.
    kube_cluster.kubectl("patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p",
                         '{"spec":{"nodeSelector":{"kubernetes.io/os":"linux"}}}')  # fmt: skip
    kube_cluster.kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = wait_for(lambda: phase_is(kube, ns, "pausable", "Running"), 60, what="Running again")
    assert resumed["status"]["startTime"] >= started["status"]["startTime"]
    assert kube.get("StatefulSet", ns, "pausable")["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux"
    }
    wait_for_events(kube, ns, "pausable", ("Normal", "Suspended"), ("Normal", "Resumed"))


def test_run_defining_fields_are_immutable(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("fixed", ns, workers=1))
    wait_for(lambda: phase_is(kube, ns, "fixed", "Pending", "Running"), 30, what="status")
    for patch, field in [
        ('{"spec":{"workers":3}}', "spec.workers"),
        ('{"spec":{"config":{"lora_r":8}}}', "spec.config"),
        ('{"spec":{"image":"other:1"}}', "spec.image"),
        ('{"spec":{"nodeSelector":{"a":"b"}}}', "spec.nodeSelector"),
    ]:
        refused = kube_cluster.kubectl(
            "patch", "ftj", "fixed", "-n", ns, "--type=merge", "-p", patch, check=False
        )
        assert refused.returncode != 0 and f"{field} " in refused.stderr, refused.stderr
    kube_cluster.kubectl("patch", "ftj", "fixed", "-n", ns, "--type=merge", "-p",
                         '{"spec":{"runPolicy":{"backoffLimit":5}}}')  # fmt: skip


def test_deadline_fails_the_job(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("slow", ns, workers=1, runPolicy={"activeDeadlineSeconds": 4}))
    failed = wait_for(lambda: phase_is(kube, ns, "slow", "Failed"), 40, what="Failed")
    assert failed["status"]["reason"] == "DeadlineExceeded"
    wait_for(lambda: kube.get("StatefulSet", ns, "slow")["spec"]["replicas"] == 0, 30, what="scaled to 0")


def test_operator_killed_mid_job_comes_back_without_duplicates(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("durable", ns))
    before = wait_for(lambda: phase_is(kube, ns, "durable", "Running"), 60, what="Running")
    made = children(kube, ns, "durable")
    uids = {kind: sorted(o["metadata"]["uid"] for o in objs) for kind, objs in made.items() if kind != "Pod"}

    operator.kill()
    try:
        time.sleep(2)
        operator.start()
        # The restarted operator re-reads everything; give it a few reconciles' worth of time.
        time.sleep(5)
        after = wait_for(lambda: phase_is(kube, ns, "durable", "Running"), 30, what="still Running")
    finally:
        if not operator.healthy():
            operator.start()
    again = children(kube, ns, "durable")
    assert {
        kind: sorted(o["metadata"]["uid"] for o in objs) for kind, objs in again.items() if kind != "Pod"
    } == uids
    assert len(live_pods(kube, ns, "durable")) == 2
    keys = ("phase", "startTime", "restarts", "workers", "observedGeneration")
    assert {k: after["status"][k] for k in keys} == {k: before["status"][k] for k in keys}
    created = [r for _, r in wait_for_events(kube, ns, "durable", ("Normal", "Created")) if r == "Created"]
    assert created == ["Created"]


def test_deletion_does_not_wait_for_the_operator(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("ephemeral", ns))
    wait_for(lambda: phase_is(kube, ns, "ephemeral", "Running"), 60, what="Running")
    operator.stop()
    try:
        kube_cluster.kubectl("delete", "ftj", "ephemeral", "-n", ns, "--timeout=30s")
        assert get_job(kube, ns, "ephemeral") is None
        wait_for(lambda: not any(children(kube, ns, "ephemeral").values()), 90, what="children collected")
    finally:
        operator.start()


def test_tracker_runs_reach_the_status_and_describe_without_credentials(kube_cluster, operator, ns, kube):
    secret = "s3cr3t-planted-token"
    apply(kube_cluster, fake_job("tracked", ns, workers=1))
    wait_for(lambda: phase_is(kube, ns, "tracked", "Running"), 60, what="phase Running")
    url = f"https://alice:{secret}@mlflow.example.com/?token={secret}#/experiments/3/runs/abc123"
    entries = [
        {
            "kind": "mlflow",
            "uri": f"https://alice:{secret}@mlflow.example.com",
            "runId": "abc123",
            "url": url,
        },
        {"kind": "tensorboard", "logDir": "/outputs/runs/x", "extra": {"nested": "dropped"}},
    ]
    # What rank 0's KubernetesReporter sends (a pod that did not strip the credentials).
    kube.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/tracked-progress",
                 body={"data": {"tracking.json": json.dumps(entries)}},
                 content_type="application/merge-patch+json")  # fmt: skip
    tracked = wait_for(lambda: (j := get_job(kube, ns, "tracked"))["status"].get("tracking") and j, 30,
                       what="status.tracking")  # fmt: skip
    assert tracked["status"]["tracking"] == [
        {"kind": "mlflow", "uri": "https://mlflow.example.com", "runId": "abc123",
         "url": "https://mlflow.example.com/#/experiments/3/runs/abc123"},
        {"kind": "tensorboard", "logDir": "/outputs/runs/x"},
    ]  # fmt: skip
    described = kube_cluster.kubectl("describe", "ftj", "-n", ns, "tracked").stdout
    assert (
        "https://mlflow.example.com/#/experiments/3/runs/abc123" in described and "TrackerRuns" in described
    )
    assert secret not in described
