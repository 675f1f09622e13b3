"""The two loops measured besides kubetune's own: HF Trainer + PEFT (the baseline) and a plain loop that
turns the levers of bench/gpu_levers.py on one at a time; plus the fast paths' correctness check."""

from __future__ import annotations

import tempfile
import time

import gpu_levers as lv
import torch
from gpu_common import (
    QKVO,
    Case,
    Example,
    attended_length,
    batches_for,
    lora_config,
    pack_rows,
    packed_batch,
    pad_batch,
    rel_err,
    reset_memory,
    result_fields,
    sync,
)


def run_hf_baseline(
    model, case: Case, examples, shape, args, gc_on: bool, lr: float, steps: int, warmup: int, heldout=None
) -> dict:
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(case.targets))
    try:
        return _train_hf(peft_model, case, examples, shape, gc_on, lr, steps, warmup, heldout)
    finally:  # also after an error (e.g. out of memory): later cases need the bare model back
        if gc_on:
            peft_model.get_base_model().gradient_checkpointing_disable()
        peft_model.unload()
        reset_memory()


def _train_hf(peft_model, case, examples, shape, gc_on, lr, steps, warmup, heldout) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    counts: list[int] = []
    losses: list[float] = []

    def collate(rows):
        batch = pad_batch(rows)
        counts.append(int(batch["attention_mask"].sum()))
        return batch

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (warmup, steps):
                sync()
                marks[str(state.global_step)] = time.perf_counter()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    reset_memory()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=case.micro_batch,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="constant",
            bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=gc_on,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            train_sampling_strategy="sequential",
            dataloader_drop_last=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=peft_model, args=targs, train_dataset=examples, data_collator=collate, callbacks=[Timer()]
        )
        trainer.train()
    # The dataloader may collate one batch ahead: batch k is still counts[k].
    tokens = sum(counts[warmup:steps])
    row = result_fields(
        tokens, marks[str(steps)] - marks[str(warmup)], shape, attended_length(examples, case.data, shape)
    )
    row.update(final_loss=losses[-1] if losses else None, losses=losses, steps=steps, warmup=warmup)
    row["trained_tokens"] = sum(
        int((e.labels[1:] != -100).sum()) for e in examples[: steps * case.micro_batch]
    )
    if heldout is not None:
        row["heldout_loss"] = hf_heldout_loss(peft_model, heldout)
    del trainer
    return row


@torch.no_grad()
def hf_heldout_loss(model, examples: list[Example]) -> float:
    """Token-mean loss of held-out examples through plain transformers (one example per forward)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total, count = 0.0, 0
    model.eval()
    for e in examples:
        ids = torch.from_numpy(e.ids)[None].to(device)
        labels = torch.from_numpy(e.labels)[None].to(device)
        n = int((labels[:, 1:] != -100).sum())
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    model.train()
    return total / count


def run_levers(model, case: Case, examples, shape, lr: float, steps: int, warmup: int) -> dict:
    """A plain training step (no Trainer) with the case's levers; model is a peft model."""
    levers = case.levers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lv.set_attention(model, levers.attn)
    lv.set_checkpointing(model, levers.gc_every, levers.reentrant)
    if levers.compile_layers:
        lv.compile_layers(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=levers.fused_adamw and device == "cuda")
    base = model.get_base_model()
    batches = batches_for(case, examples, shape)
    if len(batches) < steps:
        raise RuntimeError(f"{len(batches)} batches for {steps} steps: make more examples")
    reset_memory()
    losses, t0, tokens = [], None, 0
    for step in range(steps):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
        b = batches[step]
        ids = b["input_ids"].to(device, non_blocking=True)
        labels = b["labels"].to(device, non_blocking=True)
        kwargs = {}
        if case.layout == "packed":
            kwargs["position_ids"] = b["position_ids"].to(device, non_blocking=True)
            if levers.attn == "varlen":
                cu = b["cu_seqlens"].to(device, non_blocking=True)
                # max_seqlen fixed at seq_len so compiled layers see one constant (it only sizes the grid).
                kwargs.update(
                    cu_seq_lens_q=cu,
                    cu_seq_lens_k=cu,
                    max_length_q=shape["seq_len"],
                    max_length_k=shape["seq_len"],
                )
        else:
            kwargs["attention_mask"] = b["attention_mask"].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if levers.loss == "hf":
                loss = base(input_ids=ids, labels=labels, **kwargs).loss
            else:
                hidden = base.model(input_ids=ids, **kwargs).last_hidden_state
                shifted = lv.hf_shift(labels)
                n = (shifted != -100).sum()
                loss = lv.token_sum_loss(levers.loss, hidden, base.lm_head.weight, shifted) / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += int(b["attention_mask"].sum())
        losses.append(loss.detach())
    sync()
    seconds = time.perf_counter() - t0
    row = result_fields(tokens, seconds, shape, attended_length(examples, case.data, shape))
    losses = [float(x) for x in losses]
    row.update(final_loss=losses[-1], losses=losses, steps=steps, warmup=warmup)
    if levers.compile_layers:
        lv.compile_layers(model, False)
    lv.set_checkpointing(model, 0, False)
    lv.set_attention(model, "sdpa")
    del opt, params
    reset_memory()
    return row


@torch.no_grad()
def check_paths(model, examples, shape) -> dict:
    """Logits of varlen and flex attention and the fused/chunked losses against SDPA + plain CE."""
    device = "cuda"
    b = packed_batch(pack_rows(examples, shape["seq_len"])[:2], shape["seq_len"])
    ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
    cu = b["cu_seqlens"].to(device)
    mask = b["attention_mask"].bool().to(device)
    out = {}
    with torch.autocast(device, dtype=torch.bfloat16):
        lv.set_attention(model, "sdpa")
        ref_hidden = model.model(input_ids=ids, position_ids=pos).last_hidden_state
        for attn in ("flex", "varlen"):
            lv.set_attention(model, attn)
            extra = {}
            if attn == "varlen":
                extra = dict(
                    cu_seq_lens_q=cu,
                    cu_seq_lens_k=cu,
                    max_length_q=shape["seq_len"],
                    max_length_k=shape["seq_len"],
                )
            hidden = model.model(input_ids=ids, position_ids=pos, **extra).last_hidden_state
            out[f"hidden_rel_err_{attn}_vs_sdpa"] = rel_err(hidden[mask], ref_hidden[mask])
        lv.set_attention(model, "sdpa")
        # One document alone, unpacked, must see the same hidden states as inside the pack.
        first = pack_rows(examples, shape["seq_len"])[0]
        solo = model.model(input_ids=torch.from_numpy(first[1].ids)[None].to(device)).last_hidden_state
        at = len(first[0].ids)
        out["hidden_rel_err_packed_vs_alone"] = rel_err(ref_hidden[0, at : at + len(first[1].ids)], solo[0])
    labels = lv.hf_shift(b["labels"].to(device))
    with torch.enable_grad():
        h = ref_hidden.detach().requires_grad_(True)
        losses = {}
        for kind in ("hf", "chunked", "liger"):
            h.grad = None
            loss = lv.token_sum_loss(kind, h, model.lm_head.weight, labels)
            loss.backward()
            losses[kind] = (float(loss), h.grad.clone())
    for kind in ("chunked", "liger"):
        out[f"loss_rel_err_{kind}_vs_plain"] = abs(losses[kind][0] - losses["hf"][0]) / abs(losses["hf"][0])
        out[f"grad_rel_err_{kind}_vs_plain"] = rel_err(losses[kind][1], losses["hf"][1])
    return out


def baseline_cases(args) -> list[tuple[Case, bool]]:
    cases = [
        (Case("lora-all-dense", "dense", "padded", 2), False),
        (Case("lora-all-gc-dense", "dense", "padded", 2), True),
        (Case("lora-all-alpaca", "alpaca", "padded", 8), False),
    ]
    if args.qkvo:
        cases += [(Case("lora-qkvo-dense", "dense", "padded", 2, tuple(QKVO)), False)]
    return cases


def lever_cases() -> list[Case]:
    L = lv.Levers
    dense = [
        L(),
        L(fused_adamw=True),
        L(loss="liger"),
        L(loss="chunked"),
        L(liger_kernels=True),
        L(compile_layers=True),
        L(loss="liger", fused_adamw=True, liger_kernels=True),
        L(loss="liger", fused_adamw=True, compile_layers=True),
    ]
    packed = [
        L(attn="sdpa", loss="liger", fused_adamw=True),
        L(attn="flex", loss="liger", fused_adamw=True),
        L(attn="varlen", loss="liger", fused_adamw=True),
        L(attn="varlen", loss="liger", fused_adamw=True, liger_kernels=True),
        L(attn="varlen", loss="liger", fused_adamw=True, compile_layers=True),
    ]
    gc_cases = [
        L(loss="liger", fused_adamw=True, gc_every=1, reentrant=True),
        L(loss="liger", fused_adamw=True, gc_every=1),
        L(loss="liger", fused_adamw=True, gc_every=1, liger_kernels=True),
        L(loss="liger", fused_adamw=True, gc_every=2, liger_kernels=True),
    ]
    out = [Case("lora-all-dense", "dense", "padded", 2, levers=x) for x in dense]
    out += [Case("lora-all-alpaca", "alpaca", "packed", 2, levers=x) for x in packed]
    out += [Case("lora-all-alpaca", "alpaca", "padded", 8, levers=L(loss="liger", fused_adamw=True))]
    out += [Case("lora-all-gc-dense", "dense", "padded", 2, levers=x) for x in gc_cases]
    out += [
        Case(
            "lora-all-dense-mb4",
            "dense",
            "padded",
            4,
            levers=L(loss="liger", fused_adamw=True, liger_kernels=True),
        )
    ]
    return out


def qlora_cases() -> list[Case]:
    L = lv.Levers
    return [
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=1),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=1, liger_kernels=True),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=2, liger_kernels=True),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, liger_kernels=True),
        ),
    ]
