"""examples/finetune-cpu-smoke.yaml without a cluster: what `kubectl apply` and the webhook will see.

The file is applied whole, into any namespace, by `make demo`, these e2e tests, the Helm e2e test
and the kind workflow; these checks catch a broken example in a second instead of a cluster run.
"""

from __future__ import annotations

import pytest
import yaml
from kubetune_operator.spec import validate_job

from tests.e2e.smoke import example_documents, the_job
from tests.paths import SEED

pytestmark = pytest.mark.e2e

# The keys the example changes in the reference config, and why: local paths (no hub) and CPU size.
CPU_KEYS = {
    "base_model", "datasets", "sequence_len", "pad_to_sequence_len", "num_epochs", "max_steps", "micro_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "logging_steps", "save_steps", "seed",
    "output_dir",
}  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return example_documents()


def test_one_job_and_its_setup_in_any_namespace(docs):
    assert [d["kind"] for d in docs] == [
        "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Job", "FineTuneJob",
    ]  # fmt: skip
    for doc in docs:
        assert "namespace" not in doc["metadata"], f"{doc['kind']} pins a namespace: apply -n must work"
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert all("namespace" not in s for s in binding["subjects"])


def test_the_job_passes_the_webhooks_validation(docs):
    job = the_job(docs)
    job["metadata"]["namespace"] = "default"
    job["metadata"]["uid"] = "0" * 36
    validation = validate_job(job)
    assert validation.ok, validation.problems
    spec = validation.spec
    assert spec.workers == 2 and spec.gpusPerWorker == 0
    assert spec.storage is not None and spec.storage.claimTemplate is not None
    config = validation.config
    assert config.max_steps and config.save_steps and config.save_steps < config.max_steps
    assert config.adapter == "lora" and not config.flash_attention  # flash-attn needs CUDA


def test_the_workers_wait_for_what_the_setup_job_makes(docs):
    """The gate: the workers' env names the ConfigMap the setup Job creates, and the data volume is
    the claim the setup Job writes into."""
    job, setup = the_job(docs), next(d for d in docs if d["kind"] == "Job")
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    gate = [e["valueFrom"]["configMapKeyRef"] for e in job["spec"]["env"] if "valueFrom" in e]
    assert len(gate) == 1 and gate[0].get("optional") is not True
    pod = setup["spec"]["template"]["spec"]
    (script,) = pod["containers"][0]["args"]
    assert f'"name": "{gate[0]["name"]}"' in script and f'"{gate[0]["key"]}":' in script
    assert 'make_fixture("/data")' in script
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert job["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    (mount,) = job["spec"]["volumeMounts"]
    config = job["spec"]["config"]
    assert config["base_model"].startswith(mount["mountPath"] + "/")
    assert config["datasets"][0]["path"].startswith(mount["mountPath"] + "/")
    # The setup Job's service account may create ConfigMaps and nothing else.
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    assert pod["serviceAccountName"] == role["metadata"]["name"]


def test_the_config_is_the_reference_config_sized_for_cpus(docs):
    if not SEED.is_file():
        pytest.skip(f"reference configs not found at {SEED.parent}")
    seed = yaml.safe_load(SEED.read_text())
    config = the_job(docs)["spec"]["config"]
    for key in set(seed) | set(config):
        if key not in CPU_KEYS:
            assert config.get(key) == seed.get(key), f"{key} differs from {SEED.name} without a reason"
    assert config["datasets"][0]["type"] == seed["datasets"][0]["type"]
