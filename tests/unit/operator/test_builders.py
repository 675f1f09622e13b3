import pytest
import yaml
from kubetune_operator import builders
from kubetune_operator.builders import BuildOptions, JobRef, parse_resources
from kubetune_operator.spec import OUTPUTS_DIR, AdmissionPolicy, validate_job

from tests.unit.operator.cases import job

UID = "0d9c2a4e-5f1b-4c8e-9a6e-1c2d3e4f5a6b"


def build(replicas=None, options=BuildOptions(), **spec):
    body = job(**spec)
    body["metadata"].update(uid=UID, labels={"argocd.argoproj.io/instance": "team-app", "team": "nlp"})
    # The builders build whatever the validation admitted; what an operator allows is tested in test_spec.
    validation = validate_job(body, AdmissionPolicy(allow_host_path=True))
    assert validation.ok, validation.problems
    ref = JobRef.of(body)
    workers = validation.spec.workers if replicas is None else replicas
    objects = builders.children(ref, validation.spec, validation.config.to_mapping(), workers, options)
    return {o["kind"]: o for o in objects}, objects


def container(children):
    return children["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]


def env(children):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(children)["env"]}


def test_children_are_owned_and_carry_only_the_selector_labels():
    children, objects = build()
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "demo-worker"), ("ConfigMap", "demo-progress"), ("Role", "demo-progress"),
        ("RoleBinding", "demo-progress"), ("ConfigMap", "demo-config"), ("Service", "demo-workers"),
        ("StatefulSet", "demo"),
    ]  # fmt: skip
    # The operator applies only the progress ConfigMap's metadata: re-applying never erases a report.
    assert set(objects[1]) == {"apiVersion", "kind", "metadata"}
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "default"
        assert meta["ownerReferences"] == [
            {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "demo", "uid": UID,
             "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip
        assert meta["labels"]["kubetune.dev/job-name"] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune"
        # The parent's labels (an ArgoCD tracking label among them) are never copied.
        assert "argocd.argoproj.io/instance" not in meta["labels"] and "team" not in meta["labels"]
        assert "app.kubernetes.io/instance" not in meta["labels"]


def test_headless_service_publishes_not_ready_pods():
    service = build()[0]["Service"]
    assert service["metadata"]["name"] == "demo-workers"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/job-name": "demo",
    }
    assert service["spec"]["ports"][0]["port"] == 29400


def test_statefulset_runs_the_workers_in_parallel_under_torchrun():
    children, _ = build()
    sts = children["StatefulSet"]["spec"]
    assert sts["replicas"] == 2 and sts["serviceName"] == "demo-workers"
    assert sts["podManagementPolicy"] == "Parallel" and sts["updateStrategy"] == {"type": "OnDelete"}
    assert sts["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/job-name": "demo",
    }
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()
    c = container(children)
    assert c["command"] == ["kubetune", "launch"]  # torchrun, with the grace period for the workers
    assert c["args"] == ["-m", "kubetune", "train", "/etc/kubetune/config.yaml"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    variables = env(children)
    assert variables["PET_NNODES"] == "2" and variables["PET_NPROC_PER_NODE"] == "1"
    assert variables["PET_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert variables["PET_RDZV_BACKEND"] == "c10d"
    assert variables["PET_RDZV_ENDPOINT"] == "demo-0.demo-workers.default.svc.cluster.local:29400"
    assert variables["PET_RDZV_ID"] == UID
    assert variables["KUBETUNE_WORKER_STOP_TIMEOUT"] == "115"  # the default grace period (120 s) less 5
    assert variables["KUBETUNE_JOB_NAME"] == "demo" and variables["KUBETUNE_JOB_NAMESPACE"] == "default"
    assert variables["NCCL_DEBUG"] == "WARN" and variables["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert variables["NCCL_NVLS_ENABLE"] == "0"
    assert "NCCL_SOCKET_IFNAME" not in variables
    pod = sts["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-worker" and pod["automountServiceAccountToken"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert volumes["config"]["configMap"]["name"] == "demo-config"
    assert volumes["outputs"] == {"name": "outputs", "nfs": {"server": "nfs.example", "path": "/outputs"}}
    assert build(workers=1)[0]["StatefulSet"]["spec"]["template"]["spec"]["volumes"][2] == {
        "name": "outputs",
        "emptyDir": {},
    }
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    # the seed config names hub sources: the fetch step and the trainer share a cache (test_fetchstep.py)
    assert mounts == {"config": "/etc/kubetune", "dshm": "/dev/shm", "outputs": OUTPUTS_DIR,
                      "cache": "/var/cache/kubetune"}  # fmt: skip


def test_gpus_become_processes_and_resource_limits():
    children, _ = build(gpusPerWorker=8, resources={"requests": {"cpu": "16", "memory": "200Gi"}})
    assert env(children)["PET_NPROC_PER_NODE"] == "8"
    assert container(children)["resources"] == {
        "requests": {"cpu": "16", "memory": "200Gi"},
        "limits": {"nvidia.com/gpu": 8},
    }
    assert "resources" not in container(build()[0])


def test_cpu_pods_run_processes_per_worker_processes_without_gpus():
    config = {**job()["spec"]["config"], "tensor_parallel_size": 2, "fsdp": ["full_shard", "auto_wrap"]}
    children, _ = build(config=config, processesPerWorker=2)
    assert env(children)["PET_NPROC_PER_NODE"] == "2" and env(children)["PET_NNODES"] == "2"
    assert "resources" not in container(children)  # no nvidia.com/gpu on a CPU job


def test_config_map_holds_the_config_with_output_dir_on_the_outputs_volume():
    children, _ = build()
    rendered = yaml.safe_load(children["ConfigMap"]["data"]["config.yaml"])
    assert rendered["output_dir"] == f"{OUTPUTS_DIR}/demo-{UID[:8]}"
    assert rendered["base_model"] == "meta-llama/Meta-Llama-3-8B" and rendered["lora_r"] == 16
    digest = children["ConfigMap"]["metadata"]["annotations"]["kubetune.dev/config-hash"]
    assert (
        children["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/config-hash"]
        == digest
    )


def test_output_dir_on_a_mounted_volume_is_kept():
    spec = job(volumes=[{"name": "data", "hostPath": {"path": "/srv"}}],
               volumeMounts=[{"name": "data", "mountPath": "/data"}])["spec"]  # fmt: skip
    spec["config"]["output_dir"] = "/data/runs/one/"
    children, _ = build(**spec)
    assert yaml.safe_load(children["ConfigMap"]["data"]["config.yaml"])["output_dir"] == "/data/runs/one"
    assert {"name": "data", "mountPath": "/data"} in container(children)["volumeMounts"]


def test_progress_rights_are_limited_to_the_jobs_progress_configmap():
    # Never the job's status: a pod could then rewrite restarts, startTime or phase.
    children, _ = build()
    assert children["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["demo-progress"],
         "verbs": ["get", "patch"]}
    ]  # fmt: skip
    assert env(children)["KUBETUNE_PROGRESS_CONFIGMAP"] == "demo-progress"
    binding = children["RoleBinding"]
    assert binding["roleRef"]["name"] == "demo-progress"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-worker", "namespace": "default"}]


def test_a_users_service_account_gets_the_progress_binding():
    children, objects = build(serviceAccountName="trainer")
    assert "ServiceAccount" not in children
    assert children["RoleBinding"]["subjects"][0]["name"] == "trainer"
    assert children["StatefulSet"]["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"


def test_storage_choices():
    children, objects = build(storage={"claimTemplate": {"size": "50Gi", "storageClassName": "fast"}})
    claim = children["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "demo-outputs" and "ownerReferences" in claim["metadata"]
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}},
                             "storageClassName": "fast"}  # fmt: skip
    assert objects[0]["kind"] == "PersistentVolumeClaim"
    volumes = {v["name"]: v for v in children["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["outputs"]["persistentVolumeClaim"] == {"claimName": "demo-outputs"}

    kept = build(storage={"claimTemplate": {"size": "1Gi", "whenDeleted": "Retain"}})[0][
        "PersistentVolumeClaim"
    ]
    assert "ownerReferences" not in kept["metadata"]

    existing = build(storage={"existingClaim": "shared", "subPath": "runs"})[0]
    assert "PersistentVolumeClaim" not in existing
    volumes = {v["name"]: v for v in existing["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["outputs"]["persistentVolumeClaim"] == {"claimName": "shared"}
    assert {"name": "outputs", "mountPath": OUTPUTS_DIR, "subPath": "runs"} in container(existing)[
        "volumeMounts"
    ]

    host = build(storage={"volume": {"hostPath": {"path": "/mnt/out"}}})[0]
    volumes = {v["name"]: v for v in host["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["outputs"] == {"name": "outputs", "hostPath": {"path": "/mnt/out"}}


def test_cache_volume_and_hf_home():
    children, _ = build(cache={"existingClaim": "hf-cache", "readOnly": True}, shmSize="16Gi")
    assert env(children)["HF_HOME"] == "/var/cache/kubetune/huggingface"
    assert {"name": "cache", "mountPath": "/var/cache/kubetune", "readOnly": True} in container(children)[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in children["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_user_env_overrides_defaults_and_pod_options_pass_through():
    children, _ = build(
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        envFrom=[{"secretRef": {"name": "s3"}}],
        nodeSelector={"gpu": "h200"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="training",
        imagePullSecrets=[{"name": "registry"}],
        image="registry.example/kubetune:1",
        imagePullPolicy="IfNotPresent",
        podMetadata={"labels": {"kueue.x-k8s.io/queue-name": "gpu", "kubetune.dev/job-name": "spoof"}},
    )  # fmt: skip
    names = [e["name"] for e in container(children)["env"]]
    assert names.count("NCCL_DEBUG") == 1 and env(children)["NCCL_DEBUG"] == "INFO"
    assert env(children)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    c = container(children)
    assert c["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert (c["image"], c["imagePullPolicy"]) == ("registry.example/kubetune:1", "IfNotPresent")
    template = children["StatefulSet"]["spec"]["template"]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"gpu": "h200"} and pod["priorityClassName"] == "training"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["imagePullSecrets"] == [
        {"name": "registry"}
    ]
    labels = template["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu"
    assert labels["kubetune.dev/job-name"] == "demo"  # selector labels cannot be overridden


def test_launcher_and_image_come_from_the_operator():
    options = BuildOptions.from_env(
        {"KUBETUNE_OPERATOR_TORCHRUN": "/venv/bin/python -m torch.distributed.run"}, default_image="local:dev"
    )
    c = container(build(options=options)[0])
    assert c["command"] == ["/venv/bin/python", "-m", "torch.distributed.run"] and c["image"] == "local:dev"
    assert BuildOptions.from_env({}).launcher == ("kubetune", "launch")


DEFAULTS = '{"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}'


def test_default_resources_apply_to_jobs_without_their_own():
    options = BuildOptions.from_env({}, default_resources=parse_resources(DEFAULTS))
    assert container(build(options=options)[0])["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"memory": "64Gi"},
    }
    # GPUs still come from gpusPerWorker only, on top of the defaults.
    assert container(build(options=options, gpusPerWorker=2)[0])["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": 2},
    }
    # A job's own spec.resources replaces the defaults as a whole (no merging of keys).
    own = container(build(options=options, gpusPerWorker=1, resources={"requests": {"cpu": "2"}})[0])
    assert own["resources"] == {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": 1}}
    # The defaults object is never modified by a job's GPUs.
    assert options.default_resources.limits == {"memory": "64Gi"}
    assert "resources" not in container(build(options=BuildOptions.from_env({}))[0])


def test_parse_resources_accepts_the_charts_json():
    assert parse_resources("") is None and parse_resources(None) is None and parse_resources("  ") is None
    parsed = parse_resources('{"requests": {"cpu": 8, "memory": "1Gi", "x": 0.5}}')
    assert parsed.requests == {"cpu": 8, "memory": "1Gi", "x": "0.5"} and parsed.limits == {}
    assert parse_resources("{}").model_dump() == {"requests": {}, "limits": {}}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{requests: {}}", "not valid JSON"),
        ("[]", "expected an object"),
        ('{"request": {}}', "unknown key(s) 'request'"),
        ('{"requests": ["cpu"]}', "requests must be an object"),
        ('{"limits": {"memory": "64GB"}}', "limits.memory: '64GB' is not a quantity"),
        ('{"limits": {"cpu": -1}}', "limits.cpu: -1 is not a quantity"),
        ('{"limits": {"cpu": true}}', "limits.cpu: True is not a quantity"),
        ('{"limits": {"nvidia.com/gpu": 1}}', "spec.gpusPerWorker"),
    ],
)
def test_parse_resources_says_what_is_wrong(text, says):
    with pytest.raises(ValueError) as err:
        parse_resources(text)
    assert says in str(err.value)


def test_suspended_and_finished_jobs_keep_their_children_at_zero_replicas():
    children, _ = build(replicas=0)
    assert children["StatefulSet"]["spec"]["replicas"] == 0


def test_building_is_deterministic():
    assert build()[1] == build()[1]


@pytest.mark.parametrize(("grace", "stop_timeout"), [(600, "595"), (3, "1")])
def test_torchruns_workers_get_the_pods_grace_period_to_stop(grace, stop_timeout):
    children, _ = build(terminationGracePeriodSeconds=grace)
    pod = children["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    assert env(children)["KUBETUNE_WORKER_STOP_TIMEOUT"] == stop_timeout
