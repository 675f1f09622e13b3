"""One rank of the peft-over-DTensor check (test_nd_cpu.py): load the model with transformers' tp_plan
over a gloo mesh, put peft LoRA on it, copy the reference's initial adapter in, take SGD steps on the
same batches, and save the losses and the gathered adapter.

    torchrun --nproc-per-node 2 tp_lora_worker.py MODEL_DIR WORK_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEPS, LR = 4, 1.0


def lora_model(model_dir: str, **load):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **load)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    return get_peft_model(model, config)


def train(model) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR)  # SGD: a wrong gradient shows as a wrong weight at once
    losses = []
    for step in range(STEPS):
        ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(step))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def trainable(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def main(model_dir: str, work: Path) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    model = lora_model(model_dir, tp_plan="auto", device_mesh=mesh)
    initial = torch.load(work / "initial.pt")
    placements = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(initial[name], p.device_mesh, p.placements))
                placements[name] = [str(placement) for placement in p.placements]
            else:
                p.copy_(initial[name])
                placements[name] = None
    losses = train(model)
    weights = trainable(model)
    if dist.get_rank() == 0:
        torch.save(weights, work / "tp.pt")
        (work / "tp.json").write_text(json.dumps({"losses": losses, "placements": placements}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
