import pytest
import yaml
from kubetune_operator.spec import (
    FineTuneJobSpec,
    load_referenced_config,
    report,
    validate_job,
    validate_name,
)

from tests.unit.operator.cases import BAD_SPECS, SEED, SEED_CONFIG, bad_job, job, seed_file_config


@pytest.mark.skipif(not SEED.exists(), reason="shared seed configs not present")
def test_the_tests_use_the_reference_config_as_written():
    assert seed_file_config() == SEED_CONFIG


def test_a_job_with_the_reference_config_is_valid():
    validation = validate_job(job())
    assert validation.ok, report(validation.problems)
    assert validation.config is not None and validation.config.base_model == SEED_CONFIG["base_model"]
    assert validation.spec.workers == 2 and validation.spec.runPolicy.backoffLimit == 3


def test_spec_defaults():
    spec = FineTuneJobSpec.model_validate({"config": {}})
    assert (spec.workers, spec.gpusPerWorker, spec.processes_per_worker, spec.suspend) == (1, 0, 1, False)


@pytest.mark.parametrize(
    ("case", "path"), [(c, p) for c, _, p in BAD_SPECS], ids=[c for c, _, _ in BAD_SPECS]
)
def test_each_bad_job_is_refused_with_its_key_path(case, path):
    validation = validate_job(bad_job(case))
    assert not validation.ok
    assert path in [p.path for p in validation.problems], report(validation.problems)
    text = report(validation.problems)
    assert text.startswith("FineTuneJob:") and path in text


def test_all_problems_are_reported_at_once():
    body = bad_job("misspelt-key")
    body["spec"]["workers"] = 0
    body["metadata"]["name"] = "Bad_Name"
    paths = [p.path for p in validate_job(body).problems]
    assert {"metadata.name", "spec.workers", "spec.config.lerning_rate"} <= set(paths)


def test_config_and_config_map_ref_are_exclusive():
    body = job(configMapRef={"name": "cfg"})
    assert [p.path for p in validate_job(body).problems] == ["spec.config"]
    del body["spec"]["config"], body["spec"]["configMapRef"]
    assert [p.path for p in validate_job(body).problems] == ["spec.config"]


def test_a_config_map_job_is_valid_without_its_config():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    validation = validate_job(body)
    assert validation.ok and validation.config is None and validation.spec.configMapRef.key == "config.yaml"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama3-lora", True),
        ("a" * 52, True),
        ("a" * 53, False),
        ("1job", False),
        ("Job", False),
        ("a_b", False),
    ],
)
def test_job_names_must_fit_the_children(name, ok):
    assert (validate_name(name) == []) is ok


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"workers": 0}, "spec.workers"),
        ({"gpusPerWorker": -1}, "spec.gpusPerWorker"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
        ({"runPolicy": {"activeDeadlineSeconds": 0}}, "spec.runPolicy.activeDeadlineSeconds"),
        ({"storage": {"claimTemplate": {"size": "lots"}}}, "spec.storage.claimTemplate.size"),
        ({"shmSize": "8 gigs"}, "spec.shmSize"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
        ({"workerz": 2}, "spec.workerz"),
        ({"env": [{"value": "x"}]}, "spec.env[0].name"),
        ({"volumeMounts": [{"name": "x"}], "volumes": [{"name": "x"}]}, "spec.volumeMounts[0].mountPath"),
        ({"volumes": [{"name": "x"}], "volumeMounts": [{"name": "x", "mountPath": "/var/lib/kubetune/outputs"}]},
         "spec.volumeMounts[0].mountPath"),
    ],
)  # fmt: skip
def test_spec_problems_name_their_key(changes, path):
    body = job()
    body["spec"].update(changes)
    problems = validate_job(body).problems
    assert path in [p.path for p in problems], report(problems)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"workerz": 2},
         ("spec.workerz", "unknown key 'workerz'; did you mean 'workers'?", "rename it to 'workers'")),
        ({"runPolicy": {"backofLimit": 2}},
         ("spec.runPolicy.backofLimit", "unknown key 'backofLimit'; did you mean 'backoffLimit'?",
          "rename it to 'backoffLimit'")),
        ({"runPolicy": {"retries.max": 2}},
         ("spec.runPolicy.retries.max", "unknown key 'retries.max' in spec.runPolicy",
          "remove it, or see docs/kubernetes.md for the keys kubetune accepts")),
        ({"workers": 0},
         ("spec.workers", "input should be greater than or equal to 1, got 0", "use a value of at least 1")),
        ({"imagePullPolicy": "always"},
         ("spec.imagePullPolicy", "input should be 'Always', 'IfNotPresent' or 'Never', got 'always'",
          "did you mean 'Always'? (imagePullPolicy: Always)")),
        ({"shmSize": "8 gigs"},
         ("spec.shmSize", None, 'write shmSize as a Kubernetes quantity such as "8Gi"')),
        ({"env": [{"value": "x"}]},
         ("spec.env[0].name", "required key is missing", "add `name: ...` (Variable name)")),
        ({"storage": {"existingClaim": "a", "claimTemplate": {"size": "1Gi"}}},
         ("spec.storage",
          "set exactly one of existingClaim, claimTemplate or volume (found existingClaim, claimTemplate)",
          "keep one of existingClaim, claimTemplate or volume")),
    ],
)  # fmt: skip
def test_spec_problems_are_worded_like_config_problems(changes, expected):
    """One translation of pydantic errors (kubetune.config.problems) for the spec and the config: the
    same did-you-mean for a misspelt key, the same bounds and the description of a missing key."""
    body = job()
    body["spec"].update(changes)
    path, message, fix = expected
    (problem,) = [p for p in validate_job(body).problems if p.path == path]
    assert problem.fix == fix
    if message is not None:
        assert problem.message == message


def test_spec_must_be_a_mapping():
    assert [p.path for p in validate_job({"metadata": {"name": "x"}, "spec": "nope"}).problems] == ["spec"]


def test_referenced_config_is_validated_like_an_inline_one():
    config, problems = load_referenced_config("base_model: x\nlerning_rate: 1\n", "cfg/config.yaml")
    assert config is None
    paths = [p.path for p in problems]
    assert "configMap cfg/config.yaml.lerning_rate" in paths
    config, problems = load_referenced_config("a: [", "cfg/config.yaml")
    assert config is None and "YAML syntax error at line 1" in problems[0].message
    config, problems = load_referenced_config("- a list\n", "cfg/config.yaml")
    assert config is None and problems[0].path == "configMap cfg/config.yaml"
    config, problems = load_referenced_config(yaml.safe_dump(SEED_CONFIG), "cfg/config.yaml")
    assert problems == [] and config.learning_rate == 0.0002


def test_the_device_mesh_must_fill_the_jobs_processes():
    """One rule (kubetune.config.mesh) at apply time: workers x gpusPerWorker is the world the mesh fills,
    and tensor x context parallel groups stay inside one pod. The typed config comes from the schema alone:
    the rules still refuse the sizes the runtime does not honour yet."""
    from kubetune.config.schema import TrainConfig
    from kubetune_operator.spec import job_config_problems

    config = TrainConfig.model_validate(
        {**SEED_CONFIG, "fsdp": ["full_shard"], "tensor_parallel_size": 4, "context_parallel_size": 2}
    )
    fits = FineTuneJobSpec.model_validate({"config": {}, "workers": 2, "gpusPerWorker": 8})
    assert job_config_problems(config, fits, "spec.config") == []
    split = FineTuneJobSpec.model_validate({"config": {}, "workers": 4, "gpusPerWorker": 4})
    (problem,) = job_config_problems(config, split, "spec.config")
    assert problem.path == "spec.config.tensor_parallel_size"
    assert problem.message == (
        "context_parallel_size 2 × tensor_parallel_size 4 = 8 processes must sit in one pod, which runs 4 "
        "(workers 4 × 4 processes per pod (gpusPerWorker))"
    )
    config = TrainConfig.model_validate(
        {**SEED_CONFIG, "fsdp": ["full_shard"], "dp_shard_size": 4, "tensor_parallel_size": 2}
    )
    assert job_config_problems(config, fits, "spec.config") == []  # dp_replicate 2 is derived: HSDP
    config = config.model_copy(update={"dp_replicate_size": 1})
    (problem,) = job_config_problems(config, fits, "spec.config")
    assert problem.path == "spec.config.dp_replicate_size"
    assert "dp_replicate 1 × dp_shard 4 × cp 1 × tp 2 = 8 processes, but the job has 16" in problem.message


def test_a_tensor_parallel_job_is_admitted_only_when_its_pods_hold_the_tp_group():
    """Through the admission path (validate_job): tp 2 in one pod of 2 GPUs is admitted; the same config on
    2 pods of 1 GPU is refused with the arithmetic (its tp group would span pods)."""
    config = {**SEED_CONFIG, "tensor_parallel_size": 2}
    admitted = validate_job(job(config=config, workers=1, gpusPerWorker=2))
    assert admitted.ok, report(admitted.problems)
    assert admitted.config is not None and admitted.config.tensor_parallel_size == 2
    refused = validate_job(job(config=config, workers=2, gpusPerWorker=1))
    paths = [p.path for p in refused.problems]
    assert "spec.config.tensor_parallel_size" in paths
    assert "one pod, which runs 1 (workers 2 × 1 processes per pod (gpusPerWorker))" in report(
        refused.problems
    )


def test_a_cpu_job_asks_for_several_processes_per_pod_with_processes_per_worker():
    """2 CPU pods x 2 processes: tp 2 inside each pod, FSDP2 across the pods (dp_shard 2) is admitted;
    the same config with one process per pod would split its tp groups across pods."""
    config = {**SEED_CONFIG, "tensor_parallel_size": 2, "fsdp": ["full_shard", "auto_wrap"]}
    admitted = validate_job(job(config=config, workers=2, processesPerWorker=2))
    assert admitted.ok, report(admitted.problems)
    assert admitted.spec.processes_per_worker == 2 and admitted.spec.gpusPerWorker == 0
    refused = validate_job(job(config=config, workers=2))
    assert "one pod, which runs 1 (workers 2 × 1 processes per pod (gpusPerWorker))" in report(
        refused.problems
    )
    refused = validate_job(job(config={**config, "tensor_parallel_size": 4}, workers=2, processesPerWorker=2))
    assert "one pod, which runs 2 (workers 2 × 2 processes per pod (processesPerWorker))" in report(
        refused.problems
    )


def test_processes_per_worker_follows_the_gpus_on_gpu_pods():
    assert validate_job(job(gpusPerWorker=4)).spec.processes_per_worker == 4
    assert validate_job(job(gpusPerWorker=4, processesPerWorker=4)).ok
    refused = validate_job(job(gpusPerWorker=4, processesPerWorker=2))
    (problem,) = refused.problems
    assert problem.path == "spec.processesPerWorker"
    assert problem.message == (
        "processesPerWorker is 2 but gpusPerWorker is 4: kubetune runs one training process per GPU"
    )
    assert validate_job(job(processesPerWorker=0)).problems[0].path == "spec.processesPerWorker"
