"""One rank of the ring-attention check (test_context_parallel.py): packed rows whose examples cross the
slices' boundary, this rank's slice through kubetune's ring attention, the output and the gradients of
its query / key / value slices saved for the test to compare with full attention over the whole rows.

    torchrun --nproc-per-node 2 ring_attention_worker.py WORK_DIR
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from kubetune.train import context_parallel

BATCH, HEADS, KV_HEADS, LENGTH, DIM = 2, 4, 2, 12, 8
# Row 0: examples of 5, 4 and 3 tokens (the first crosses the middle); row 1: one example of 12.
POSITION_IDS = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2], list(range(12))])


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(BATCH, HEADS, LENGTH, DIM, generator=generator)
    key = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator)
    value = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator)
    upstream = torch.randn(BATCH, LENGTH, HEADS, DIM, generator=generator)  # d(loss)/d(output)
    return query, key, value, upstream


def main(work: Path) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    split = context_parallel.SequenceSplit(dist.group.WORLD, pad_token_id=0)
    query, key, value, upstream = inputs()
    width = LENGTH // size
    mine = slice(rank * width, (rank + 1) * width)
    q, k, v = (t[:, :, mine].clone().requires_grad_(True) for t in (query, key, value))
    _, _, decoder_inputs = split.split(
        torch.zeros(BATCH, LENGTH, dtype=torch.long),
        torch.zeros(BATCH, LENGTH),
        {"position_ids": POSITION_IDS},
    )
    module = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS)
    out, _ = context_parallel.ring_attention_forward(
        module,
        q,
        k,
        v,
        None,
        scaling=DIM**-0.5,
        **{context_parallel.DOCUMENTS_KWARG: decoder_inputs[context_parallel.DOCUMENTS_KWARG]},
    )
    (out * upstream[:, mine]).sum().backward()
    torch.save({"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}, work / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
