"""Context parallelism over packed rows (kubetune.train.context_parallel) on CPU processes (gloo)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kubetune.data.collator import block_causal_mask

from . import ring_attention_worker as worker
from .support import subprocess_env

pytestmark = pytest.mark.slow


def full_attention(query, key, value, position_ids):
    """SDPA over the whole rows with kubetune's block-diagonal causal mask (what a single process runs)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    mask = block_causal_mask(position_ids)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out.transpose(1, 2)


def test_ring_attention_over_two_ranks_matches_full_attention_with_packed_rows(tmp_path):
    query, key, value, upstream = worker.inputs()
    leaves = [t.clone().requires_grad_(True) for t in (query, key, value)]
    expected = full_attention(*leaves, worker.POSITION_IDS)
    (expected * upstream).sum().backward()

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               worker.__file__, str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    got = {name: torch.cat([r[name] for r in ranks], dim=1 if name == "out" else 2) for name in ranks[0]}
    torch.testing.assert_close(got["out"], expected.detach(), rtol=0, atol=1e-5)
    for name, leaf in zip(("dq", "dk", "dv"), leaves, strict=True):
        # the key / value gradients of rank 0's slice come back around the ring from rank 1's queries
        torch.testing.assert_close(got[name], leaf.grad, rtol=0, atol=1e-5, msg=name)
    # the packed examples matter: ignoring them (plain causal attention) gives another output
    plain = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), is_causal=True
    ).transpose(1, 2)
    assert (plain - expected).abs().max() > 0.1
