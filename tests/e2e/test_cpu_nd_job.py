"""An N-D FineTuneJob on the local cluster: 2 pods × 2 processes, tensor parallel 2 × FSDP2 over 2.

The CPU smoke example's documents (the setup Job writes the tiny Llama and its data), with the
FineTuneJob asking for `processesPerWorker: 2` and a LoRA config whose device mesh is
tensor_parallel_size 2 × dp_shard_size 2 on the 4 ranks. torchrun numbers the ranks pod after pod,
so each pod holds one tensor-parallel group (ranks 0-1, 2-3) and FSDP2 shards across the pods
({0,2}, {1,3}): the layout the seed's nd-parallel overlay uses at GPU size. The numbers themselves
(losses against one process) are proven in tests/unit/train/test_nd_cpu.py; here the operator's
pods, torchrun's rendezvous over two pods and the runtime's mesh over them run the job to the end.

Why dp_shard and not dp_replicate: tensor parallelism with plain replication (tp 2 × dp_replicate 2,
dp_shard 1) is refused by accelerate's ParallelismConfig (it composes TP only with FSDP2 or HSDP),
and so by kubetune's mesh rules at apply time; HSDP × TP needs 8 ranks (2 × 2 × 2).
"""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from tests.e2e.smoke import (
    Watch,
    claim_directory,
    local_outputs,
    manifest,
    progress_lines,
    the_job,
    trainer_logs,
)
from tests.e2e.test_cpu_smoke import (  # kube, ns, operator: the smoke test's fixtures
    JOB,
    _check_clean_finish,
    _diagnostics,
    _documents,
    _wait_for_phase,
    kube,  # noqa: F401
    ns,  # noqa: F401
    operator,  # noqa: F401
)
from tests.unit.train.reload import load_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 8
ND_CONFIG = {
    "tensor_parallel_size": 2,
    "dp_shard_size": 2,
    "fsdp": ["full_shard", "auto_wrap"],
    "fsdp_config": {"fsdp_version": 2},
    "max_steps": STEPS,
    "save_steps": STEPS // 2,
    "micro_batch_size": 2,  # 2 data-parallel groups × 2 rows = 4 rows a step
    "learning_rate": 0.02,
    "lr_scheduler": "constant",
}
# A row of `kubectl get ftj`: NAME PHASE PROGRESS STEP LOSS WORKERS ...
ROW = re.compile(rf"^{JOB}\s+Running\s+\d+%\s+(\d+)\s+([0-9.]+)\s+2/2\s")
MESH_LINE = "device mesh on CPU processes (gloo): DeviceMesh((dp_shard=2, tp=2), 'cpu'"
RANK_TAG = re.compile(r"\[rank (\d+)\]")


def _check_pods(api, namespace: str) -> None:
    """torchrun's options in the workers' env (the pods are gone after success; their template stays):
    2 nodes of 2 processes, each pod's node rank from its StatefulSet index, the rendezvous on pod 0."""
    spec = api.get("StatefulSet", namespace, JOB)["spec"]
    trainer = spec["template"]["spec"]["containers"][0]
    env = {entry["name"]: entry for entry in trainer["env"]}
    assert spec["serviceName"] and env["PET_NNODES"]["value"] == "2"
    assert env["PET_NPROC_PER_NODE"]["value"] == "2", "processesPerWorker did not reach torchrun"
    assert "apps.kubernetes.io/pod-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["PET_RDZV_ENDPOINT"]["value"].startswith(f"{JOB}-0.")
    assert trainer["args"][:3] == ["-m", "kubetune", "train"]


def _check_ranks(cluster, namespace: str) -> None:
    """4 ranks over the 2 pods, a tensor-parallel group in each: torchrun numbers ranks pod after pod."""
    logs = {pod: trainer_logs(cluster, namespace, f"{JOB}-{pod}") for pod in (0, 1)}
    ranks = {pod: {int(r) for r in RANK_TAG.findall(log)} for pod, log in logs.items()}
    assert ranks == {0: {0, 1}, 1: {2, 3}}, f"ranks seen in each pod's log: {ranks}"
    assert MESH_LINE in logs[0], "rank 0 did not log the dp_shard 2 × tp 2 mesh"


def _check_adapter(api, namespace: str, out) -> None:
    """The exported adapter on a fresh, un-sharded base in plain peft: whole (no missing weights; a
    tensor-parallel shard would not even load), trained, finite and changing the model's output."""
    from transformers import AutoTokenizer

    base = claim_directory(api, namespace, "cpu-smoke-data") / "model"
    model = load_adapter(str(base), out)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    ids = torch.tensor([tokenizer("Give three tips for staying healthy.")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b), "a lora_B is still zero: not trained"
    assert (logits - plain).abs().max() > 1e-4, "the adapter does not change the logits"


def test_a_tensor_parallel_x_fsdp_job_on_two_pods_of_two_processes_trains_to_succeeded(
    kube_cluster,
    operator,  # noqa: F811
    kube,  # noqa: F811
    ns,  # noqa: F811
):
    docs = _documents(ns, kube_cluster)
    job = the_job(docs)
    job["spec"]["processesPerWorker"] = 2
    # FSDP on CPU processes (gloo) is a development switch: accelerate runs FSDP only on accelerators.
    job["spec"]["env"].append({"name": "KUBETUNE_CPU_FSDP", "value": "1"})
    job["spec"]["config"] |= ND_CONFIG
    watch = Watch(kube_cluster, ns).start()
    started = time.monotonic()
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest(docs))
        status = _wait_for_phase(kube, ns, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", f"the N-D job failed: {status.get('message')}"
        print(f"Succeeded {time.monotonic() - started:.1f}s after kubectl apply")
        time.sleep(1)  # the watch prints the last rows
        rows = watch.stop()

        _check_pods(kube, ns)
        progress = status["progress"]
        assert progress["completed"] is True and progress["step"] == progress["totalSteps"] == STEPS
        _check_clean_finish(kube, ns, status, STEPS)  # status.progress.loss is the run's final loss
        # The status's loss fell: the first report (step 1) and the checkpoint's are forced out.
        midway = [(int(m[1]), float(m[2])) for row in rows if (m := ROW.match(row)) and 0 < int(m[1]) < STEPS]
        assert midway, f"no progress before the end in kubectl get ftj (rows: {rows})"
        assert progress["loss"] < midway[0][1], f"loss in status: {midway} -> {progress['loss']} at the end"

        if not kube_cluster.local:
            return
        _check_ranks(kube_cluster, ns)
        out = local_outputs(kube_cluster, kube, ns, f"{JOB}-outputs", status["outputs"]["outputDir"])
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["world_size"] == 4 and summary["steps"] == STEPS
        logged = [line["loss"] for line in progress_lines(trainer_logs(kube_cluster, ns, f"{JOB}-0"))
                  if line["event"] == "train"]  # fmt: skip
        assert len(logged) == STEPS and sum(logged[-3:]) < sum(logged[:3]), f"losses did not fall: {logged}"
        assert (out / "checkpoints" / f"checkpoint-{STEPS // 2}" / "COMPLETE").is_file()
        _check_adapter(kube, ns, out)
        print(f"loss {logged[0]:.4f} -> {logged[-1]:.4f} over {STEPS} steps on 4 ranks; "
              f"{summary['wall_time_s']}s in the trainer")  # fmt: skip
    except BaseException:
        watch.stop()
        _diagnostics(kube_cluster, operator, ns)
        raise
