"""Smoke-check the runtime image's GPU library set on a real GPU (the image's entrypoint is `kubetune`).

    docker run --rm --gpus 1 --entrypoint python ghcr.io/kubetune/runtime:0.1.0 /opt/kubetune/check_gpu_stack.py

Each check exercises the path kubetune trains with, on a tiny random-init Llama (no hub access):
  versions     torch / transformers / peft / accelerate / bitsandbytes / deepspeed / flash-attn
  qlora        4-bit NF4 base (bitsandbytes) + LoRA (peft): forward, backward, optimizer step
  deepspeed    FusedAdam (a CUDA op JIT-built or prebuilt) and a ZeRO stage-2 engine step
  flash-attn   attn_implementation="flash_attention_2" forward/backward in bf16

Prints one line per check and exits 1 when any check fails (a missing optional library is
reported as "absent" and fails only with --require-all).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import traceback


def _tiny_llama_dir(root: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    path = os.path.join(root, "tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _batch(device: str = "cuda"):
    import torch

    ids = torch.randint(0, 512, (2, 64), device=device)
    return {"input_ids": ids, "labels": ids.clone()}


def check_versions() -> str:
    import torch

    assert torch.cuda.is_available(), "torch sees no CUDA device"
    parts = [f"torch {torch.__version__} (CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)})"]
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "deepspeed", "flash_attn"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            parts.append(f"{name} absent")
    return ", ".join(parts)


def check_qlora(model_dir: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, device_map={"": 0})
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**_batch()).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    layer = type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__
    return f"4-bit base ({layer}) + LoRA, losses {', '.join(f'{x:.3f}' for x in losses)}"


def check_deepspeed(model_dir: str) -> str:
    import deepspeed
    import torch
    from deepspeed.ops.adam import FusedAdam
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2},
    }
    optimizer = FusedAdam(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    loss = engine(**_batch(engine.device)).loss
    engine.backward(loss)
    engine.step()
    torch.distributed.destroy_process_group()
    return f"ZeRO-2 step with FusedAdam, loss {loss.item():.3f}"


def check_flash_attn(model_dir: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).cuda()
    loss = model(**_batch()).loss
    loss.backward()
    return f"flash_attention_2 forward/backward, loss {loss.item():.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-all", action="store_true", help="an absent optional library fails")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as root:
        model_dir = None
        checks = [("versions", check_versions, None)]
        checks += [
            ("qlora", check_qlora, "bitsandbytes"),
            ("deepspeed", check_deepspeed, "deepspeed"),
            ("flash-attn", check_flash_attn, "flash_attn"),
        ]
        for name, check, needs in checks:
            if needs is not None and importlib.util.find_spec(needs) is None:
                print(f"{name}: absent ({needs} is not installed)", flush=True)
                failed |= args.require_all
                continue
            try:
                if needs is not None and model_dir is None:
                    model_dir = _tiny_llama_dir(root)
                print(f"{name}: ok: {check(model_dir) if needs else check()}", flush=True)
            except Exception:  # noqa: BLE001 - every failing check is reported, then the exit code says it
                failed = True
                print(f"{name}: FAILED\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
