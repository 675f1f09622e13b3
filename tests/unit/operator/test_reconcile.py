import yaml
from kubetune_operator.builders import BuildOptions
from kubetune_operator.reconcile import Reconciler

from tests.unit.operator.cases import bad_job, job, seed_config
from tests.unit.operator.fake_kube import FakeKube


def setup(body=None):
    kube = FakeKube()
    stored = kube.add(body or job())
    return kube, Reconciler(kube, BuildOptions()), stored


def add_pod(kube, index, **status):
    container = {"name": "trainer", "state": {"running": {}}, "lastState": {}}
    container.update(status)
    kube.add({
        "kind": "Pod",
        "metadata": {"name": f"demo-{index}", "labels": {"app.kubernetes.io/managed-by": "kubetune",
                                                        "kubetune.dev/job-name": "demo",
                                                        "apps.kubernetes.io/pod-index": str(index)}},
        "status": {"phase": "Running", "containerStatuses": [container]},
    })  # fmt: skip


def status(kube):
    return kube.objects[("FineTuneJob", "default", "demo")]["status"]


def test_first_reconcile_creates_the_children_and_a_pending_status():
    kube, reconciler, _ = setup()
    result = reconciler.reconcile("default", "demo")
    assert result.phase == "Pending"
    assert [c[1] for c in kube.writes() if c[0] == "apply"] == [
        "ServiceAccount", "ConfigMap", "Role", "RoleBinding", "ConfigMap", "Service", "StatefulSet",
    ]  # fmt: skip
    assert status(kube)["phase"] == "Pending" and kube.events[0][1] == "Created"


def test_unchanged_children_are_not_applied_again_and_nothing_is_written():
    kube, reconciler, _ = setup()
    reconciler.reconcile("default", "demo")
    kube.calls.clear()
    reconciler.reconcile("default", "demo")
    assert kube.writes() == []
    reconciler.forget("default", "demo")  # e.g. the StatefulSet was deleted by hand
    reconciler.reconcile("default", "demo")
    assert len([c for c in kube.writes() if c[0] == "apply"]) == 7


def test_running_then_group_restart_deletes_pods_before_counting():
    kube, reconciler, _ = setup()
    reconciler.reconcile("default", "demo")
    add_pod(kube, 0)
    add_pod(kube, 1)
    assert reconciler.reconcile("default", "demo").phase == "Running"
    add_pod(kube, 1, lastState={"terminated": {"exitCode": 1, "message": "boom"}})
    kube.calls.clear()
    reconciler.reconcile("default", "demo")
    writes = kube.writes()
    assert writes[:2] == [("delete", "Pod", "demo-0"), ("delete", "Pod", "demo-1")]
    assert writes[2] == ("patch_status", "demo")
    assert status(kube)["restarts"] == 1 and ("Warning", "Restarting") == kube.events[-1][:2]


def test_success_scales_the_statefulset_to_zero():
    kube, reconciler, _ = setup()
    reconciler.reconcile("default", "demo")
    add_pod(kube, 0, lastState={"terminated": {"exitCode": 0, "message": '{"final_loss": 0.5}'}})
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    assert kube.objects[("StatefulSet", "default", "demo")]["spec"]["replicas"] == 0
    assert status(kube)["outputs"]["summary"] == {"final_loss": 0.5}
    assert status(kube)["outputs"]["outputDir"].startswith("/var/lib/kubetune/outputs/demo-")


def test_invalid_job_fails_and_creates_nothing():
    kube, reconciler, _ = setup(bad_job("unknown-dataset-type", name="demo"))
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert [c for c in kube.writes() if c[0] == "apply"] == []
    assert "spec.config.datasets[0].type" in status(kube)["message"]
    kube.calls.clear()
    reconciler.reconcile("default", "demo")
    assert kube.writes() == []


def test_a_child_the_apiserver_refuses_fails_the_job_as_invalid_spec():
    kube, reconciler, _ = setup()
    kube.refuse["StatefulSet"] = (
        'StatefulSet.apps "demo" is invalid: spec.template.spec.tolerations[0].operator: Unsupported value'
    )
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert status(kube)["reason"] == "InvalidSpec" and "tolerations[0].operator" in status(kube)["message"]


def test_config_map_ref_waits_then_snapshots_the_config():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    kube, reconciler, _ = setup(body)
    result = reconciler.reconcile("default", "demo")
    assert result.phase == "Pending" and result.requeue_after == 10
    assert status(kube)["reason"] == "ConfigMapNotFound"
    kube.add(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"config.yaml": yaml.safe_dump(seed_config())},
        }
    )
    assert reconciler.reconcile("default", "demo").phase == "Pending"
    own = kube.objects[("ConfigMap", "default", "demo-config")]
    assert yaml.safe_load(own["data"]["config.yaml"])["lora_r"] == 16
    # Editing the source later does not change a started run.
    kube.objects[("ConfigMap", "default", "cfg")]["data"]["config.yaml"] = "base_model: other\n"
    reconciler.forget("default", "demo")
    reconciler.reconcile("default", "demo")
    assert (
        yaml.safe_load(kube.objects[("ConfigMap", "default", "demo-config")]["data"]["config.yaml"])["lora_r"]
        == 16
    )


def test_an_emptied_copy_of_a_referenced_config_fails_the_job_naming_it():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    kube, reconciler, _ = setup(body)
    kube.add(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"config.yaml": yaml.safe_dump(seed_config())},
        }
    )
    reconciler.reconcile("default", "demo")
    kube.objects[("ConfigMap", "default", "demo-config")]["data"]["config.yaml"] = ""
    reconciler.forget("default", "demo")
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert "delete ConfigMap demo-config" in status(kube)["message"]


def test_an_invalid_referenced_config_fails_the_job():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    kube, reconciler, _ = setup(body)
    kube.add({"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"config.yaml": "lerning_rate: 1\n"}})
    assert reconciler.reconcile("default", "demo").phase == "Failed"
    assert "configMap cfg/config.yaml.lerning_rate" in status(kube)["message"]


def test_ttl_deletes_a_finished_job():
    kube, reconciler, stored = setup(job(runPolicy={"ttlSecondsAfterFinished": 0}))
    kube.objects[("FineTuneJob", "default", "demo")]["status"] = {
        "phase": "Succeeded", "completionTime": "2020-01-01T00:00:00Z",
    }  # fmt: skip
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    assert ("FineTuneJob", "default", "demo") not in kube.objects


def test_a_gone_job_is_forgotten():
    kube, reconciler, _ = setup()
    del kube.objects[("FineTuneJob", "default", "demo")]
    assert reconciler.reconcile("default", "demo").phase is None
