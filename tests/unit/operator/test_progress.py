"""status.progress comes from the job's progress ConfigMap, field by field; the operator owns the status.

Two promises: a pod cannot rewrite the operator's bookkeeping (issue: rank 0 could PATCH the whole
status), and a Succeeded job always shows its final step at 100%, whatever order rank 0's last
report and its exit arrive in (the race is reproduced by holding the last report back, not by load).
"""

import json

from kubetune_operator.builders import BuildOptions
from kubetune_operator.progress import final, read_report, sanitize
from kubetune_operator.reconcile import Reconciler

from tests.unit.operator.cases import job
from tests.unit.operator.fake_kube import FakeKube


def setup(**spec):
    kube = FakeKube()
    kube.add(job(**spec))
    reconciler = Reconciler(kube, BuildOptions())
    assert reconciler.reconcile("default", "demo").phase == "Pending"  # children (the ConfigMap) exist
    return kube, reconciler


def report(kube, **fields):
    """What rank 0's KubernetesReporter does: a merge patch of data.progress.json in its ConfigMap."""
    configmap = kube.objects[("ConfigMap", "default", "demo-progress")]
    configmap.setdefault("data", {})["progress.json"] = json.dumps(fields)


def add_pod(kube, index, **container):
    status = {"name": "trainer", "state": {"running": {}}, "lastState": {}, **container}
    kube.add({"kind": "Pod",
              "metadata": {"name": f"demo-{index}", "labels": {"app.kubernetes.io/managed-by": "kubetune",
                                                              "kubetune.dev/job-name": "demo",
                                                              "apps.kubernetes.io/pod-index": str(index)}},
              "status": {"phase": "Running", "containerStatuses": [status]}})  # fmt: skip


def status(kube):
    return kube.objects[("FineTuneJob", "default", "demo")]["status"]


def test_a_pod_writing_phase_succeeded_or_restarts_changes_nothing():
    kube, reconciler = setup(runPolicy={"backoffLimit": 1, "activeDeadlineSeconds": 3600})
    add_pod(kube, 0)
    add_pod(kube, 1)
    assert reconciler.reconcile("default", "demo").phase == "Running"
    before = {k: status(kube)[k] for k in ("startTime", "restarts")}
    report(kube, step=5, totalSteps=10, percent="100%", phase="Succeeded", restarts=0, reason="Completed",
           startTime="2099-01-01T00:00:00Z", conditions=[{"type": "Succeeded", "status": "True"}],
           loss="NaN", lastCheckpoint={"path": "x"})  # fmt: skip
    assert reconciler.reconcile("default", "demo").phase == "Running"
    st = status(kube)
    assert st["phase"] == "Running" and {k: st[k] for k in before} == before
    assert st["progress"] == {"step": 5, "totalSteps": 10, "percent": "50%"}  # percent derived, junk gone
    assert all(c["type"] != "Succeeded" or c["status"] == "False" for c in st["conditions"])
    # A crash still counts against backoffLimit, whatever the pod wrote about restarts.
    add_pod(kube, 1, lastState={"terminated": {"exitCode": 1, "message": "boom"}})
    reconciler.reconcile("default", "demo")
    assert status(kube)["restarts"] == 1


def test_the_pods_role_cannot_write_the_job():
    kube, _ = setup()
    role = kube.objects[("Role", "default", "demo-progress")]
    assert [(r["apiGroups"], r["resources"], r["resourceNames"]) for r in role["rules"]] == [
        ([""], ["configmaps"], ["demo-progress"])
    ]


def test_succeeded_shows_the_final_step_when_the_last_report_is_held_back():
    """The race of issue 23: rank 0 exits (summary: 3 steps) before its final report (step 3) lands."""
    kube, reconciler = setup()
    add_pod(kube, 0)
    add_pod(kube, 1)
    report(kube, step=2, totalSteps=3, loss=1.5, etaSeconds=4)
    assert reconciler.reconcile("default", "demo").phase == "Running"
    assert status(kube)["progress"]["percent"] == "66%"
    summary = {"status": "completed", "steps": 3, "final_train_loss": 1.25}
    add_pod(kube, 0, state={"terminated": {"exitCode": 0, "message": json.dumps(summary)}})
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    progress = status(kube)["progress"]
    assert progress == {"step": 3, "totalSteps": 3, "percent": "100%", "completed": True, "loss": 1.25}
    # The held-back report lands now, then an even older one: a finished job's status stays.
    report(kube, step=3, totalSteps=3, completed=True)
    reconciler.reconcile("default", "demo")
    report(kube, step=1, totalSteps=3)
    reconciler.reconcile("default", "demo")
    assert status(kube)["progress"] == progress


def test_succeeded_without_a_summary_still_shows_100_percent():
    assert final({"step": 2, "totalSteps": 3}, {}) == {
        "step": 2, "totalSteps": 3, "percent": "100%", "completed": True,
    }  # fmt: skip
    assert final({}, {"steps": 7}) == {"step": 7, "totalSteps": 7, "percent": "100%", "completed": True}


def test_unreadable_or_oversized_reports_are_ignored():
    assert read_report({"data": {"progress.json": "[" * 100_000}}) is None
    assert read_report({"data": {"progress.json": "{" + '"a": 1,' * 10_000 + '"b": 2}'}}) is None
    assert read_report({"data": {"progress.json": "not json"}}) is None
    assert read_report({"data": {}}) is None and read_report(None) is None
    assert sanitize({"step": True, "totalSteps": -1, "epoch": float("inf"), "completed": "yes"}) == {}


def test_a_preference_runs_reward_means_reach_the_status_and_nothing_else_does():
    """The runtime's status.progress.rewards (trl's metric means of the last train line) is copied key
    by key, finite numbers only; the Margin column of `kubectl get ftj -o wide` reads it."""
    from kubetune.train.progress import Progress

    kube, reconciler = setup()
    add_pod(kube, 0)
    train = Progress(step=4, total_steps=10, epoch=0.4, loss=0.5,
                     rewards={"rewards/margins": 0.75, "rewards/chosen": 0.5, "kl": 0.1},
                     train_rewards={"rewards/margins": 0.75, "rewards/chosen": 0.5, "kl": 0.1})  # fmt: skip
    report(kube, **train.status())
    reconciler.reconcile("default", "demo")
    assert status(kube)["progress"]["rewards"] == {"margins": 0.75, "chosen": 0.5}
    rewards = {"margins": 1.5, "accuracies": "high", "chosen": float("nan"), "phase": 1.0, "logpsChosen": -3}
    assert sanitize({"step": 1, "rewards": rewards})["rewards"] == {"margins": 1.5, "logpsChosen": -3}
    assert "rewards" not in sanitize({"step": 1, "rewards": "0.9"})
    assert "rewards" not in Progress(step=1, total_steps=2, epoch=0.5).status()  # an SFT run has none
