"""FineTuneJobs shared by the operator's unit and integration tests.

The training config is the reference config from ../shared/seed-configs (kept as written:
the operator never loads the model, so the hub name is fine here).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.paths import SEED

# A copy in the tests keeps CI independent of the shared directory; a test checks they agree.
SEED_CONFIG: dict[str, Any] = {
    "base_model": "meta-llama/Meta-Llama-3-8B",
    "model_type": "LlamaForCausalLM",
    "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}],
    "sequence_len": 2048,
    "sample_packing": True,
    "pad_to_sequence_len": True,
    "adapter": "lora",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": ["q_proj", "v_proj", "k_proj", "o_proj"],
    "num_epochs": 3,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "learning_rate": 0.0002,
    "output_dir": "./outputs/llama3-lora",
}


def seed_config() -> dict[str, Any]:
    return copy.deepcopy(SEED_CONFIG)


# Several workers need outputs every one of them mounts (spec.shared_storage_problems).
SHARED_OUTPUTS = {"volume": {"nfs": {"server": "nfs.example", "path": "/outputs"}}}


def job(name: str = "demo", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"config": seed_config(), "workers": 2}
    body.update(spec)
    if body["workers"] > 1:
        body.setdefault("storage", copy.deepcopy(SHARED_OUTPUTS))
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _config(**changes: Any) -> dict[str, Any]:
    config = seed_config()
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


# (case id, spec changes, key path the refusal must name). Each passes the CRD's schema and CEL
# rules, so with the webhook off the apiserver stores it and the operator must fail it.
BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("misspelt-key", {"config": _config(lerning_rate=0.0002)}, "spec.config.lerning_rate"),
    (
        "unknown-dataset-type",
        {"config": _config(datasets=[{"path": "tatsu-lab/alpaca", "type": "alpacca"}])},
        "spec.config.datasets[0].type",
    ),
    (
        "misspelt-dataset-key",
        {"config": _config(datasets=[{"path": "tatsu-lab/alpaca", "type": "alpaca", "feild": "text"}])},
        "spec.config.datasets[0].feild",
    ),
    ("qlora-without-4bit", {"config": _config(adapter="qlora")}, "spec.config.load_in_4bit"),
    ("bf16-and-fp16", {"config": _config(bf16=True, fp16=True)}, "spec.config.fp16"),
    (
        "two-attentions",
        {"config": _config(flash_attention=True, sdp_attention=True)},
        "spec.config.sdp_attention",
    ),
    ("lora-keys-without-adapter", {"config": _config(adapter=None)}, "spec.config.lora_r"),
    (
        "lora-without-targets",
        {"config": _config(lora_target_modules=None)},
        "spec.config.lora_target_modules",
    ),
    ("tensor-parallel", {"config": _config(tensor_parallel_size=4)}, "spec.config.tensor_parallel_size"),
    (
        "reserved-volume-name",
        {"volumes": [{"name": "config", "emptyDir": {}}]},
        "spec.volumes[0].name",
    ),
    (
        "mount-of-missing-volume",
        {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        "spec.volumeMounts[0].name",
    ),
    (
        "two-storage-choices",
        {"storage": {"existingClaim": "outputs", "claimTemplate": {"size": "10Gi"}}},
        "spec.storage",
    ),
    (
        "host-path-volume",
        {"volumes": [{"name": "node-root", "hostPath": {"path": "/"}}]},
        "spec.volumes[0].hostPath",
    ),
    (
        "workers-on-per-pod-storage",
        {"storage": {"volume": {"emptyDir": {}}}},
        "spec.storage.volume.emptyDir",
    ),
    (
        "gpu-limit-disagrees",
        {"gpusPerWorker": 1, "resources": {"limits": {"nvidia.com/gpu": 2}}},
        "spec.resources.limits.nvidia.com/gpu",
    ),
]


def bad_job(case: str, name: str | None = None, namespace: str = "default") -> dict[str, Any]:
    for case_id, changes, _ in BAD_SPECS:
        if case_id == case:
            body = job(name or f"bad-{case_id}", namespace)
            body["spec"].update(copy.deepcopy(changes))
            return body
    raise KeyError(case)


def seed_file_config() -> dict[str, Any]:
    return yaml.safe_load(SEED.read_text())
