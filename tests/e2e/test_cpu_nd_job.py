"""N-D FineTuneJobs on the local cluster: 2 pods of several processes, a tensor-parallel model sharded by FSDP2.

The CPU smoke example's documents (the setup Job writes the tiny Llama and its data), with the
FineTuneJob asking for `processesPerWorker` and a LoRA config whose device mesh fills the ranks.
torchrun numbers the ranks pod after pod and tp is the innermost mesh dim, so every tensor-parallel
group sits inside a pod. Two layouts (LAYOUTS):

  * 2 pods × 2 processes, tensor_parallel_size 2 × dp_shard_size 2: a tp group per pod (ranks 0-1,
    2-3), FSDP2 shards across the pods ({0,2}, {1,3}), as the seed's nd-parallel overlay does at GPU size;
  * 2 pods × 4 processes, dp_replicate_size 2 × dp_shard_size 2 × tensor_parallel_size 2 (HSDP × TP):
    tp and the FSDP shards inside each pod, the replicas across the pods ({0,4}, ...).

tp 2 × dp_replicate 2 on 2 × 2 processes (replication without sharding) is refused at apply time, before
any pod starts: accelerate's ParallelismConfig composes tensor parallelism only with FSDP2 or HSDP
(config/mesh.py; the last test here).
The numbers of tp × dp_shard (losses against one process) are proven in tests/unit/train/test_nd_cpu.py;
here the operator's pods, torchrun's rendezvous over two pods and the runtime's mesh over them run the
job to the end.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

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
FSDP2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}
TRAINING = {
    "max_steps": STEPS,
    "save_steps": STEPS // 2,
    "micro_batch_size": 2,
    "learning_rate": 0.02,
    "lr_scheduler": "constant",
}


@dataclass(frozen=True)
class Layout:
    processes: int  # per pod (spec.processesPerWorker); 2 pods
    sizes: dict[str, int]  # the config's mesh keys
    mesh: str  # how rank 0 logs the mesh


LAYOUTS = {
    "tp2_x_dp_shard2": Layout(2, {"tensor_parallel_size": 2, "dp_shard_size": 2}, "(dp_shard=2, tp=2)"),
    "hsdp2x2_x_tp2": Layout(
        4,
        {"tensor_parallel_size": 2, "dp_shard_size": 2, "dp_replicate_size": 2},
        "(dp_replicate=2, dp_shard=2, tp=2)",
    ),
}
# A row of `kubectl get ftj`: NAME PHASE PROGRESS STEP LOSS WORKERS ...
ROW = re.compile(rf"^{JOB}\s+Running\s+\d+%\s+(\d+)\s+([0-9.]+)\s+2/2\s")
# torchrun's own log at LOGLEVEL=INFO (glog lines): its launch configs, and its rendezvous's result.
GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+\] ", re.MULTILINE)
LAUNCH_CONFIG = re.compile(r"^  (\w+)\s+: (.*)$", re.MULTILINE)
RENDEZVOUS = re.compile(
    r"group_rank=(\d+)\s+group_world_size=(\d+)\s+local_ranks=\[[^\]]*\]\s+role_ranks=\[[^\]]*\]\s+"
    r"global_ranks=\[([\d, ]*)\]\s+role_world_sizes=\[[^\]]*\]\s+global_world_sizes=\[([\d, ]*)\]"
)


def _check_pods(api, namespace: str, layout: Layout) -> None:
    """torchrun's options in the workers' env (the pods are gone after success; their template stays):
    2 nodes of `layout.processes` processes, each pod's node rank from its StatefulSet index, the
    rendezvous on pod 0."""
    spec = api.get("StatefulSet", namespace, JOB)["spec"]
    trainer = spec["template"]["spec"]["containers"][0]
    env = {entry["name"]: entry for entry in trainer["env"]}
    assert spec["serviceName"] and env["PET_NNODES"]["value"] == "2"
    assert env["PET_NPROC_PER_NODE"]["value"] == str(layout.processes), (
        "processesPerWorker did not reach torchrun"
    )
    assert "apps.kubernetes.io/pod-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["PET_RDZV_ENDPOINT"]["value"].startswith(f"{JOB}-0.")
    assert trainer["args"][:3] == ["-m", "kubetune", "train"]


def _check_torchrun(cluster, namespace: str, layout: Layout) -> None:
    """What torchrun made of the pods' PET_* variables, from its own log in each pod: 2 nodes of
    `layout.processes` processes meeting at pod 0; pod i is node i and runs ranks i·n .. i·n+n-1 of 2n (so
    the consecutive ranks of a tp group share a pod). Then the mesh rank 0 built over them."""
    n, logs = layout.processes, {}
    for pod in (0, 1):
        logs[pod] = trainer_logs(cluster, namespace, f"{JOB}-{pod}")
        text = GLOG_PREFIX.sub("", logs[pod])
        launch = dict(LAUNCH_CONFIG.findall(text))
        assert launch, f"{JOB}-{pod}: torchrun logged no launch configs (LOGLEVEL=INFO)"
        assert (launch["min_nodes"], launch["max_nodes"], launch["nproc_per_node"]) == ("2", "2", str(n)), (
            launch
        )
        assert launch["rdzv_backend"] == "c10d" and launch["rdzv_endpoint"].startswith(f"{JOB}-0."), launch
        found = RENDEZVOUS.findall(text)
        assert found, f"{JOB}-{pod}: torchrun logged no rendezvous result"
        node, nodes, ranks, sizes = found[-1]
        assert (int(node), int(nodes)) == (pod, 2), f"{JOB}-{pod} is torchrun node {node} of {nodes}"
        assert [int(r) for r in ranks.split(",")] == list(range(pod * n, pod * n + n)), (
            f"{JOB}-{pod}: {ranks}"
        )
        assert {int(size) for size in sizes.split(",")} == {2 * n}, f"{JOB}-{pod}: world sizes {sizes}"
    mesh = f"device mesh on CPU processes (gloo): DeviceMesh({layout.mesh}, 'cpu'"
    assert mesh in logs[0], f"rank 0 did not log {mesh!r}"


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


@pytest.mark.parametrize("name", LAYOUTS)
def test_an_nd_job_on_two_pods_of_several_processes_trains_to_succeeded(
    kube_cluster,
    operator,  # noqa: F811
    kube,  # noqa: F811
    ns,  # noqa: F811
    name,
):
    layout = LAYOUTS[name]
    docs = _documents(ns, kube_cluster)
    job = the_job(docs)
    job["spec"]["processesPerWorker"] = layout.processes
    # FSDP on CPU processes (gloo) is a development switch: accelerate runs FSDP only on accelerators.
    job["spec"]["env"].append({"name": "KUBETUNE_CPU_FSDP", "value": "1"})
    job["spec"]["env"].append({"name": "LOGLEVEL", "value": "INFO"})  # torchrun logs each pod's ranks
    job["spec"]["config"] |= {**layout.sizes, **FSDP2, **TRAINING}
    watch = Watch(kube_cluster, ns).start()
    started = time.monotonic()
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest(docs))
        status = _wait_for_phase(kube, ns, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", f"the N-D job failed: {status.get('message')}"
        print(f"{name}: Succeeded {time.monotonic() - started:.1f}s after kubectl apply")
        time.sleep(1)  # the watch prints the last rows
        rows = watch.stop()

        _check_pods(kube, ns, layout)
        progress = status["progress"]
        assert progress["completed"] is True and progress["step"] == progress["totalSteps"] == STEPS
        _check_clean_finish(kube, ns, status, STEPS)  # status.progress.loss is the run's final loss
        # The status's loss fell: the first report (step 1) and the checkpoint's are forced out.
        midway = [(int(m[1]), float(m[2])) for row in rows if (m := ROW.match(row)) and 0 < int(m[1]) < STEPS]
        assert midway, f"no progress before the end in kubectl get ftj (rows: {rows})"
        assert progress["loss"] < midway[0][1], f"loss in status: {midway} -> {progress['loss']} at the end"

        if not kube_cluster.local:
            return
        _check_torchrun(kube_cluster, ns, layout)
        out = local_outputs(kube_cluster, kube, ns, f"{JOB}-outputs", status["outputs"]["outputDir"])
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["world_size"] == 2 * layout.processes and summary["steps"] == STEPS
        logged = [line["loss"] for line in progress_lines(trainer_logs(kube_cluster, ns, f"{JOB}-0"))
                  if line["event"] == "train"]  # fmt: skip
        assert len(logged) == STEPS and sum(logged[-3:]) < sum(logged[:3]), f"losses did not fall: {logged}"
        assert (out / "checkpoints" / f"checkpoint-{STEPS // 2}" / "COMPLETE").is_file()
        _check_adapter(kube, ns, out)
        print(f"{name}: loss {logged[0]:.4f} -> {logged[-1]:.4f} over {STEPS} steps on {2 * layout.processes} ranks; "
              f"{summary['wall_time_s']}s in the trainer")  # fmt: skip
    except BaseException:
        watch.stop()
        _diagnostics(kube_cluster, operator, ns)
        raise


def test_tensor_parallel_with_plain_replication_is_refused_at_apply_time(kube_cluster, operator, kube, ns):  # noqa: F811
    """tp 2 × dp_replicate 2 on 2 pods × 2 processes replicates a tensor-parallel model without sharding it,
    which accelerate does not compose: the job fails before any pod exists, saying why and with the pods'
    arithmetic."""
    job = the_job(_documents(ns, kube_cluster))
    job["spec"]["processesPerWorker"] = 2
    job["spec"]["config"] |= {"tensor_parallel_size": 2, "dp_replicate_size": 2, **FSDP2}
    kube_cluster.kubectl("apply", "-f", "-", input=manifest([job]))
    status = _wait_for_phase(kube, ns, "Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed" and status["reason"] == "InvalidConfig", status
    message = status["message"]
    assert "replicates a tensor/context-parallel model without sharding it" in message, message
    assert "(workers 2 × 2 processes per pod (processesPerWorker))" in message, message
    assert "dp_shard_size 2 in place of dp_replicate_size 2" in message, message  # what to do
    assert kube.get("StatefulSet", ns, JOB) is None
