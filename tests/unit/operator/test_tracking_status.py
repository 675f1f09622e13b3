"""status.tracking: the tracker runs rank 0 names in its progress ConfigMap, cleaned by the operator.

The pod is not trusted: wrong types, unknown kinds and fields, oversize strings and too many entries
are dropped, links must be http(s), and credentials in a URI are stripped again even when the pod
left them in. `kubectl describe ftj` shows status.tracking and the TrackerRuns event.
"""

import json

from kubetune_operator.progress import (
    TRACKING_ENTRIES,
    TRACKING_TEXT_LIMIT,
    read_tracking,
    sanitize_tracking,
    tracking_summary,
)

from tests.unit.operator.test_progress import add_pod, setup, status

SECRET = "s3cr3t-planted-token"
MLFLOW = {
    "kind": "mlflow",
    "uri": "http://mlflow.team.svc:5000",
    "experiment": "llama-sft",
    "experimentId": "3",
    "runId": "abc123",
    "url": "http://mlflow.team.svc:5000/#/experiments/3/runs/abc123",
}


def announce(kube, entries):
    """What rank 0's KubernetesReporter does: a merge patch of data.tracking.json in its ConfigMap."""
    configmap = kube.objects[("ConfigMap", "default", "demo-progress")]
    configmap.setdefault("data", {})["tracking.json"] = json.dumps(entries)


def running_job():
    kube, reconciler = setup()
    add_pod(kube, 0)
    add_pod(kube, 1)
    assert reconciler.reconcile("default", "demo").phase == "Running"
    return kube, reconciler


def test_the_tracker_runs_are_copied_into_the_status_with_one_event():
    kube, reconciler = running_job()
    tensorboard = {"kind": "tensorboard", "logDir": "/outputs/demo/runs/Dec04_23-30-00_demo-0"}
    announce(kube, [MLFLOW, tensorboard])
    reconciler.reconcile("default", "demo")
    assert status(kube)["tracking"] == [MLFLOW, tensorboard]
    events = [e for e in kube.events if e[1] == "TrackerRuns"]
    assert events == [
        (
            "Normal",
            "TrackerRuns",
            f"mlflow run abc123: {MLFLOW['url']}; tensorboard: {tensorboard['logDir']}",
        )
    ]
    # The same runs again (a resumed run names them unchanged): no second event, status unchanged.
    reconciler.reconcile("default", "demo")
    announce(kube, [MLFLOW, tensorboard])
    reconciler.reconcile("default", "demo")
    assert len([e for e in kube.events if e[1] == "TrackerRuns"]) == 1
    assert status(kube)["tracking"] == [MLFLOW, tensorboard]


def test_the_status_keeps_the_runs_when_the_configmap_no_longer_names_them():
    kube, reconciler = running_job()
    announce(kube, [MLFLOW])
    reconciler.reconcile("default", "demo")
    del kube.objects[("ConfigMap", "default", "demo-progress")]["data"]["tracking.json"]
    reconciler.reconcile("default", "demo")
    assert status(kube)["tracking"] == [MLFLOW]


def test_credentials_a_pod_left_in_a_uri_never_reach_the_status_or_events():
    kube, reconciler = running_job()
    leaky = dict(
        MLFLOW,
        uri=f"https://alice:{SECRET}@mlflow.example.com/?token={SECRET}",
        url=f"https://alice:{SECRET}@mlflow.example.com/?token={SECRET}#/experiments/3/runs/abc123",
    )
    announce(kube, [leaky])
    reconciler.reconcile("default", "demo")
    tracking = status(kube)["tracking"]
    assert tracking[0]["uri"] == "https://mlflow.example.com/"
    assert tracking[0]["url"] == "https://mlflow.example.com/#/experiments/3/runs/abc123"
    assert SECRET not in json.dumps(kube.objects[("FineTuneJob", "default", "demo")])
    assert kube.events and SECRET not in json.dumps(kube.events)


def test_wrong_types_unknown_kinds_and_extra_fields_are_dropped():
    entries = [
        "mlflow",  # not an object
        {"kind": "neptune", "runId": "x"},  # unknown kind
        {"runId": "no-kind"},
        {
            "kind": "wandb",
            "project": "p",
            "runId": 42,  # not a string
            "entity": ["team"],
            "url": "javascript:alert(1)",  # a link must be http(s)
            "phase": "Succeeded",  # not a tracking field
            "mode": "",
        },
    ]
    assert sanitize_tracking(entries) == [{"kind": "wandb", "project": "p"}]
    assert sanitize_tracking({"kind": "mlflow"}) == []  # not a list
    assert sanitize_tracking(None) == []


def test_oversize_strings_are_dropped_not_cut_and_entries_are_bounded():
    long = "x" * (TRACKING_TEXT_LIMIT + 1)
    cleaned = sanitize_tracking([dict(MLFLOW, runId=long, url="http://h/" + long)])
    assert cleaned == [{k: v for k, v in MLFLOW.items() if k not in ("runId", "url")}]
    assert len(sanitize_tracking([MLFLOW] * 10)) == TRACKING_ENTRIES


def test_unreadable_or_oversized_configmap_values_are_ignored():
    assert read_tracking({"data": {"tracking.json": "{not json"}}) is None
    assert read_tracking({"data": {"tracking.json": json.dumps([MLFLOW] * 10_000)}}) is None
    assert read_tracking({"data": {"tracking.json": json.dumps([{"kind": "other"}])}}) is None
    assert read_tracking({"data": {"tracking.json": json.dumps([MLFLOW])}}) == [MLFLOW]
    assert read_tracking(None) is None


def test_the_event_names_each_run_and_where_to_look():
    wandb = {"kind": "wandb", "project": "p", "runId": "r1", "mode": "offline"}
    assert tracking_summary([wandb, {"kind": "tensorboard"}]) == "wandb run r1: p; tensorboard"
