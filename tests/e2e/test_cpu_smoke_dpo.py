"""A DPO FineTuneJob on the local cluster: the CPU smoke example with `rl: dpo` on the tiny preference pairs.

The same documents as examples/finetune-cpu-smoke.yaml (the setup Job writes /data/data/pairs.jsonl
beside the SFT data: kubetune.tiny.make_fixture); only the FineTuneJob's config changes: preference
pairs, rl: dpo, no sample packing. Two worker pods train over gloo (DDP), and the job's status
carries trl's reward means (status.progress.rewards) as rank 0 logs them.
"""

from __future__ import annotations

import pytest

from tests.e2e.smoke import local_outputs, manifest, progress_lines, the_job, trainer_logs
from tests.e2e.test_cpu_smoke import (  # kube, ns, operator: the smoke test's fixtures
    JOB,
    _diagnostics,
    _documents,
    _wait_for_phase,
    kube,  # noqa: F401
    ns,  # noqa: F401
    operator,  # noqa: F401
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 30
DPO_CONFIG = {
    "datasets": [{"path": "/data/data/pairs.jsonl", "type": "chatml.intel"}],
    "rl": "dpo",
    "rl_beta": 0.1,
    "sample_packing": False,
    "micro_batch_size": 4,
    "max_steps": STEPS,
    "lr_scheduler": "constant",
    "save_steps": 15,
}


def test_a_dpo_job_trains_to_succeeded_with_rewards_in_its_status(kube_cluster, operator, kube, ns):  # noqa: F811
    docs = _documents(ns, kube_cluster)
    the_job(docs)["spec"]["config"] |= DPO_CONFIG
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest(docs))
        status = _wait_for_phase(kube, ns, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", f"the DPO job failed: {status.get('message')}"
        progress = status["progress"]
        assert progress["completed"] is True and progress["step"] == STEPS
        rewards = progress["rewards"]
        print(f"status.progress.rewards at the end: {rewards}")
        assert set(rewards) >= {"chosen", "rejected", "margins", "accuracies"}
        assert rewards["margins"] > 0  # the right answers are preferred by the end
        if not kube_cluster.local:
            return
        logged = [line for line in progress_lines(trainer_logs(kube_cluster, ns, f"{JOB}-0"))
                  if line["event"] == "train"]  # fmt: skip
        assert logged[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2: a fresh adapter is the reference
        # the status holds rank 0's rewards of a logged step (the last report may be held back by the rate bound)
        assert any(abs(rewards["margins"] - line["rewards/margins"]) < 1e-4 for line in logged)
        out = local_outputs(kube_cluster, kube, ns, f"{JOB}-outputs", status["outputs"]["outputDir"])
        assert (out / "adapter_model.safetensors").is_file() and (out / "KUBETUNE_COMPLETE").is_file()
        print(f"DPO job: loss {logged[0]['loss']:.4f} -> {logged[-1]['loss']:.4f}, margin "
              f"{logged[0]['rewards/margins']:.4f} -> {logged[-1]['rewards/margins']:.4f}")  # fmt: skip
    except BaseException:
        _diagnostics(kube_cluster, operator, ns)
        raise
