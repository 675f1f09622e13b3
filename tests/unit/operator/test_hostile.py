"""Hostile or careless jobs: bombs in configs, names of existing objects, oversized children.

Each ends in a Failed (or waiting) job that says why, within one reconcile and a bounded time; none
raises out of the reconcile (kopf would retry it forever) or touches an object the job did not create.
"""

import time

import yaml
from kubetune_operator import reconcile as reconcile_module
from kubetune_operator.builders import BuildOptions
from kubetune_operator.k8s import ApiError
from kubetune_operator.reconcile import Reconciler
from kubetune_operator.spec import REPORT_CHARS, REPORT_PROBLEMS, report, validate_job

from tests.unit.operator.cases import job, seed_config
from tests.unit.operator.fake_kube import FakeKube

BOMB = 'deepspeed:\n  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"  {chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9)}]\n" for i in range(1, 9)
)


def referencing(name="demo", source="cfg"):
    body = job(name, configMapRef={"name": source})
    del body["spec"]["config"]
    return body


def setup(body):
    kube = FakeKube()
    kube.add(body)
    return kube, Reconciler(kube, BuildOptions())


def status(kube, name="demo"):
    return kube.objects[("FineTuneJob", "default", name)]["status"]


def test_an_alias_bomb_in_a_referenced_configmap_fails_the_job_quickly():
    kube, reconciler = setup(referencing())
    kube.add({"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"config.yaml": BOMB}})
    started = time.monotonic()
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert time.monotonic() - started < 5.0
    assert "configMap cfg/config.yaml.deepspeed" in status(kube)["message"]
    assert "more than 10000 keys and values" in status(kube)["message"]
    assert [c for c in kube.writes() if c[0] == "apply"] == []


def test_deeply_nested_inline_config_is_refused_without_a_recursion_error():
    deep: dict = {}
    node = deep
    for _ in range(900):
        node["k"] = {}
        node = node["k"]
    config = seed_config()
    config["deepspeed"] = deep
    validation = validate_job(job(config=config))
    (problem,) = validation.problems
    assert problem.path.startswith("spec.config.deepspeed.k.k") and "deeper than 64" in problem.message


def test_a_refusal_of_thousands_of_unknown_keys_is_bounded():
    config = seed_config()
    config.update({f"unknown_key_{i}": "x" * 50 for i in range(3000)})
    text = report(validate_job(job(config=config)).problems)
    assert len(text) <= REPORT_CHARS
    assert text.startswith("FineTuneJob: 3000 config problems")
    assert f"... and {3000 - REPORT_PROBLEMS} more problems" in text


def test_an_existing_configmap_with_the_child_name_is_never_taken_over():
    kube, reconciler = setup(job())
    mine = {"kind": "ConfigMap", "metadata": {"name": "demo-config"}, "data": {"notes": "my own"}}
    kube.add(mine)
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert status(kube)["reason"] == "ChildNameTaken"
    assert "ConfigMap demo-config already exists and was not created for this job" in status(kube)["message"]
    kept = kube.objects[("ConfigMap", "default", "demo-config")]
    assert kept["data"] == {"notes": "my own"} and "ownerReferences" not in kept["metadata"]
    assert ("apply", "ConfigMap", "demo-config") not in kube.calls
    assert ("apply", "StatefulSet", "demo") not in kube.calls


def test_a_service_of_another_owner_is_not_taken_over():
    kube, reconciler = setup(job())
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-web", "controller": True}
    kube.add({"kind": "Service", "metadata": {"name": "demo-workers", "ownerReferences": [other]}})
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert "(controlled by Deployment web)" in status(kube)["message"]


def test_children_of_an_earlier_job_of_the_same_name_are_waited_for_not_failed():
    kube, reconciler = setup(job())
    old = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "demo", "uid": "old",
           "controller": True}  # fmt: skip
    kube.add({"kind": "ServiceAccount", "metadata": {"name": "demo-worker", "ownerReferences": [old]}})
    result = reconciler.reconcile("default", "demo")
    assert result.phase == "Pending" and result.requeue_after is not None
    assert status(kube)["reason"] == "PreviousChildrenPresent"
    del kube.objects[("ServiceAccount", "default", "demo-worker")]  # the garbage collector got to it
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    assert status(kube)["reason"] != "PreviousChildrenPresent"


def test_a_retained_claim_of_a_job_of_this_name_is_used_not_refused():
    storage = {"claimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteMany"], "whenDeleted": "Retain"}}
    kube, reconciler = setup(job(storage=storage))
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    reconciler.forget("default", "demo")
    kube.calls.clear()
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    assert ("apply", "PersistentVolumeClaim", "demo-outputs") not in kube.calls


def test_a_child_larger_than_the_api_stores_fails_the_job_with_the_reason(monkeypatch):
    monkeypatch.setattr(reconcile_module, "MAX_CHILD_BYTES", 600)
    kube, reconciler = setup(job())
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert status(kube)["reason"] == "ChildTooLarge"
    assert "Kubernetes stores at most 600" in status(kube)["message"]
    assert [c for c in kube.writes() if c[0] == "apply"] == []


def test_a_request_too_large_for_the_apiserver_is_not_retried_forever():
    assert ApiError(413, "Request entity too large: limit is 3145728").invalid
    kube, reconciler = setup(job())
    kube.refuse["ConfigMap"] = "Request entity too large"  # FakeKube refuses like a 422
    assert reconciler.reconcile("default", "demo").phase == "Failed"


def test_a_config_map_ref_naming_the_jobs_own_configmap_is_refused_at_admission():
    for taken in ("demo-config", "demo-progress"):
        problems = validate_job(referencing(source=taken)).problems
        assert [p.path for p in problems] == ["spec.configMapRef.name"]
    assert validate_job(referencing(source="demo-source")).ok


def test_the_rendered_configmap_read_back_is_bounded_too():
    kube, reconciler = setup(referencing())
    kube.add({"kind": "ConfigMap", "metadata": {"name": "cfg"},
              "data": {"config.yaml": yaml.safe_dump(seed_config())}})  # fmt: skip
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    own = kube.objects[("ConfigMap", "default", "demo-config")]
    own["data"]["config.yaml"] = BOMB  # someone edited the job's own copy
    reconciler.forget("default", "demo")
    assert reconciler.reconcile("default", "demo").phase == "Failed"


def sts_event(kube, reason, message, at):
    kube.add({"kind": "Event", "metadata": {"name": f"demo.{reason}.{at}"}, "reason": reason,
              "message": message, "lastTimestamp": at,
              "involvedObject": {"kind": "StatefulSet", "name": "demo"}})  # fmt: skip


def test_pods_the_statefulset_cannot_create_are_reported_within_one_reconcile():
    kube, reconciler = setup(job())
    kube.objects[("FineTuneJob", "default", "demo")]["metadata"]["creationTimestamp"] = "2026-05-01T12:00:00Z"
    first = reconciler.reconcile("default", "demo")
    assert first.phase == "Pending" and first.requeue_after is not None and first.requeue_after <= 10
    refused = ('create Pod demo-0 in StatefulSet demo failed error: pods "demo-0" is forbidden: violates '
               'PodSecurity "restricted:latest": allowPrivilegeEscalation != false')  # fmt: skip
    sts_event(kube, "FailedCreate", "old job's refusal", "2026-05-01T11:00:00Z")  # before this job
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    assert status(kube)["reason"] == "WorkersStarting"
    sts_event(kube, "FailedCreate", refused, "2026-05-01T12:00:05Z")
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    st = status(kube)
    assert st["reason"] == "FailedCreate" and "violates PodSecurity" in st["message"]
    (running,) = [c for c in st["conditions"] if c["type"] == "Running"]
    assert running["status"] == "False" and running["reason"] == "FailedCreate"
    assert kube.events[-1][:2] == ("Warning", "FailedCreate")
    sts_event(
        kube, "SuccessfulCreate", "create Pod demo-0 in StatefulSet demo successful", "2026-05-01T12:01:00Z"
    )
    reconciler.reconcile("default", "demo")
    assert status(kube)["reason"] == "WorkersStarting"


def test_a_refused_value_is_not_echoed_whole():
    problems = validate_job(job(image="registry.example/" + "x" * 5000)).problems
    assert problems and all(len(p.message) < 300 for p in problems)
