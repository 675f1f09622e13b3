"""N-D parallelism on CPU processes (gloo), float32, against one process with the same global batch.

First the libraries themselves: peft's LoRA layers over transformers' DTensor tensor-parallel layers
(the Llama tp_plan), with the DTensor collectives carried by gloo. Then `kubetune train` under torchrun
with tensor_parallel_size / dp_shard_size / dp_replicate_size / context_parallel_size (and their
compositions tp × dp_shard, tp × cp): 6 steps with a checkpoint at 3, resumed
from it at the same layout, the saved adapter loaded by plain peft (and, for TP 2, merged by
`kubetune merge` into a model plain transformers loads). Every run starts from the same
adapter (`lora_model_dir`): peft initialises a fresh adapter differently on a tensor-parallel model
than on a plain one, so only a common start makes the curves comparable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kubetune.cli import main as cli

from . import tp_lora_worker
from .reload import assert_adapter_matters, assert_reproduces, load_full_model, load_result
from .support import build_config, subprocess_env, torchrun_train
from .test_runs import logits_of, probe_ids, train_in_process

pytestmark = pytest.mark.slow


def test_peft_lora_over_tensor_parallel_layers_matches_one_process(tiny_tp, tmp_path):
    torch.manual_seed(0)
    reference = tp_lora_worker.lora_model(tiny_tp["model"])
    torch.save(tp_lora_worker.trainable(reference), tmp_path / "initial.pt")
    expected_losses = tp_lora_worker.train(reference)
    expected = tp_lora_worker.trainable(reference)

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        tp_lora_worker.__file__, tiny_tp["model"], str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "tp.json").read_text())
    # peft follows the base layer's sharding: lora_B of a column-wise layer is sharded on its output
    # rows, lora_A of a row-wise layer on its input columns; the other factor is a plain replicated tensor.
    placements = report["placements"]
    layer = "base_model.model.model.layers.0."
    assert placements[layer + "self_attn.q_proj.lora_B.default.weight"] == ["S(0)"]
    assert placements[layer + "self_attn.q_proj.lora_A.default.weight"] is None
    assert placements[layer + "mlp.down_proj.lora_A.default.weight"] == ["S(1)"]
    assert placements[layer + "mlp.down_proj.lora_B.default.weight"] is None
    assert report["losses"] == pytest.approx(expected_losses, rel=1e-5)
    got = torch.load(tmp_path / "tp.pt")
    assert got.keys() == expected.keys() and len(got) == 2 * 2 * 7  # 2 layers x 7 linears x (A, B)
    for name, weight in expected.items():
        # 4 SGD steps at lr 1 move each adapter by ~0.1; a missing all-reduce would be off by that much
        torch.testing.assert_close(got[name], weight, rtol=0, atol=1e-6, msg=name)


STEPS = {"max_steps": 6, "save_steps": 3, "learning_rate": 0.01, "micro_batch_size": 2}
CPU_FSDP2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}
TOLERANCE = {"losses_rel": 1e-4, "resumed_rel": 1e-5, "logits_atol": 1e-4}


@pytest.fixture(scope="module")
def start_adapter(tiny_tp, seed_mapping, tmp_path_factory) -> str:
    """A non-zero LoRA adapter of the seed's shape (plain peft), where every run starts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_tp["model"], dtype=torch.float32)
    config = LoraConfig(
        r=seed_mapping["lora_r"],
        lora_alpha=seed_mapping["lora_alpha"],
        target_modules=seed_mapping["lora_target_modules"],
        init_lora_weights=False,  # B is random too: the start's logits already depend on the adapter
    )
    directory = tmp_path_factory.mktemp("start-adapter")
    get_peft_model(base, config).save_pretrained(directory)
    return str(directory)


def losses(summary: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in summary["history"]}


def reference(seed_mapping, tiny_tp, start_adapter, directory: Path, accumulation: int, **common):
    """(summary, trained logits) of one process whose global batch is the N-D run's."""
    cfg, _ = build_config(
        seed_mapping, tiny_tp, directory, gradient_accumulation_steps=accumulation, lora_model_dir=start_adapter,
        **STEPS, **common,
    )  # fmt: skip
    run, summary = train_in_process(cfg)
    return summary, logits_of(run.accelerator.unwrap_model(run.module).model, probe_ids(tiny_tp))


def run_resume_and_reload(
    seed_mapping,
    tiny_tp,
    start_adapter,
    tmp_path,
    *,
    nproc,
    accumulation,
    env=None,
    tolerance=TOLERANCE,
    common=None,
    **keys,
) -> tuple[Path, torch.Tensor]:
    """The N-D run (`keys`) on `nproc` processes against one process with `accumulation` micro-batches;
    `common` keys go to both. Returns the N-D run's config file and the one process's trained logits."""
    expected_summary, expected_logits = reference(
        seed_mapping, tiny_tp, start_adapter, tmp_path / "reference", accumulation, **(common or {})
    )
    cfg, path = build_config(
        seed_mapping, tiny_tp, tmp_path / "nd", lora_model_dir=start_adapter, gradient_accumulation_steps=1,
        **STEPS, **(common or {}), **keys,
    )  # fmt: skip
    out = Path(cfg.output_dir)
    first = torchrun_train(path, nproc, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    if not torch.cuda.is_available():
        assert "device mesh on CPU processes (gloo)" in first.stderr
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == nproc
    assert losses(summary) == pytest.approx(losses(expected_summary), rel=tolerance["losses_rel"])
    assert summary["trained_tokens"] == expected_summary["trained_tokens"]  # each row counted once
    assert (out / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()

    for leftover in out.iterdir():  # resume from checkpoint-3 at the same layout
        if leftover.name != "checkpoints":
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    second = torchrun_train(path, nproc, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    after = {step: loss for step, loss in losses(resumed).items() if step > 3}
    first_losses = losses(summary)
    assert after == pytest.approx({step: first_losses[step] for step in after}, rel=tolerance["resumed_rel"])

    model = load_result(tiny_tp["model"], out)  # plain peft on an un-sharded base
    assert_reproduces(model, probe_ids(tiny_tp), expected_logits, atol=tolerance["logits_atol"])
    assert_adapter_matters(model, probe_ids(tiny_tp), expected_logits, atol=tolerance["logits_atol"])
    return path, expected_logits


def test_tensor_parallel_2_matches_one_process(seed_mapping, tiny_tp, start_adapter, tmp_path):
    """TP 2: both ranks read the same rows; one process with the same 2-row batch. Then `kubetune merge`
    with the TP run's own config (tensor_parallel_size 2, one process) folds the gathered adapter into
    the base: plain transformers loads the merged model and gives the one-process run's trained logits."""
    path, expected_logits = run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=1, tensor_parallel_size=2
    )
    target = tmp_path / "merged"
    assert cli(["merge", str(path), "--output", str(target)]) == 0
    merged = load_full_model(target)  # a "newly initialized" / missing-weights warning fails here
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert_reproduces(merged, probe_ids(tiny_tp), expected_logits, atol=TOLERANCE["logits_atol"])


def test_dp_shard_2_matches_one_process(seed_mapping, tiny_tp, start_adapter, tmp_path):
    """FSDP2 over the mesh's dp_shard dim: 2 ranks x 2 rows vs 1 process x 2 micro-batches of 2 rows."""
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=2,
        env={"KUBETUNE_CPU_FSDP": "1"}, dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


def test_hsdp_2x2_matches_one_process(seed_mapping, tiny_tp, start_adapter, tmp_path):
    """HSDP: dp_replicate 2 x dp_shard 2 on 4 ranks, 2 rows each vs 1 process x 4 micro-batches."""
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=4,
        env={"KUBETUNE_CPU_FSDP": "1"}, dp_replicate_size=2, dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


def test_tensor_parallel_2_x_dp_shard_2_matches_one_process(seed_mapping, tiny_tp, start_adapter, tmp_path):
    """TP 2 inside FSDP2 over dp_shard 2 on 4 ranks (ranks {0,1} and {2,3} are the tp groups, each reading
    2 rows) vs 1 process x 2 micro-batches of 2 rows."""
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=2,
        env={"KUBETUNE_CPU_FSDP": "1"}, tensor_parallel_size=2, dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


def test_context_parallel_2_over_packed_rows_matches_one_process(
    seed_mapping, tiny_tp, start_adapter, tmp_path
):
    """CP 2 with ring attention, FSDP2 over the cp ranks: both ranks read the same 2 packed rows (sequence_len
    256 packs 2-3 examples a row, so examples cross the split) and train one half of each; one process
    with the same rows and full attention. With gradient checkpointing (long rows need it), so the ring
    also runs again inside the backward's recomputation (tp x cp below runs without)."""
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=1,
        common={"sequence_len": 256, "gradient_checkpointing": True},
        env={"KUBETUNE_CPU_FSDP": "1"}, context_parallel_size=2, ring_attn=True, **CPU_FSDP2,
    )  # fmt: skip


def test_tensor_parallel_2_x_context_parallel_2_matches_one_process(
    seed_mapping, tiny_tp, start_adapter, tmp_path
):
    """The seed overlay's composition at CPU size: tp 2 inside cp 2 (ranks {0,1} hold the first half of every
    row, {2,3} the second), FSDP2 over the cp ranks; all 4 read the same 2 packed rows."""
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=1, common={"sequence_len": 256},
        env={"KUBETUNE_CPU_FSDP": "1"}, tensor_parallel_size=2, context_parallel_size=2, ring_attn=True, **CPU_FSDP2,
    )  # fmt: skip
