"""Training throughput on one GPU: kubetune's training path side by side with HF Trainer + PEFT.

Builds the Llama-3-8B shape locally with random bf16 weights (no download), makes synthetic data
(dense 2048-token rows and an alpaca-like lognormal length mix with prompt tokens masked), and
measures non-pad tokens/s, MFU, peak memory and the loss for each case, one JSON object per line:

    python bench/gpu_throughput.py --suite baseline,levers --out bench/results/gpu_throughput.jsonl
    python bench/gpu_throughput.py --shape tiny --suite all --out /tmp/smoke.jsonl      # CPU smoke test

Suites: `baseline` (HF Trainer + PEFT, the issue's anchor cases), `levers` (one speed lever at a time
on a plain step, bench/gpu_levers.py), `kubetune` (the engine's real path) and `parity` (the same
examples in the same order through both; loss at equal trained tokens). MFU counts
4·N + 6·S·H·L FLOPs per token for LoRA (6·N + 12·S·H·L for full fine-tuning), N without the input
embedding, S the attended length (2048 dense, the mean example length when documents are packed
or padded), against 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_levers as lv  # noqa: E402
from gpu_common import (  # noqa: E402
    KT_EXAMPLES,
    QKVO,
    SHAPES,
    START,
    Case,
    Recorder,
    build_model,
    lora_config,
    make_examples,
    reset_memory,
)
from gpu_kubetune import (  # noqa: E402
    extra_kubetune_cases,
    issue9_cases,
    kubetune_cases,
    kubetune_row,
    parity_report,
    run_child,
)
from gpu_runs import (  # noqa: E402
    baseline_cases,
    check_paths,
    lever_cases,
    qlora_cases,
    run_hf_baseline,
    run_levers,
)


def guarded(rec: Recorder, deadline: float, system: str, case: Case, variant: str, fn) -> dict | None:
    if time.monotonic() - START > deadline:
        return rec.add(system=system, case=case.name, variant=variant, skipped="time budget spent")
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - one failing lever must not lose the rest of the run
        traceback.print_exc()
        reset_memory()
        return rec.add(
            system=system, case=case.name, variant=variant, error=f"{type(exc).__name__}: {exc}"[:400]
        )
    return rec.add(
        system=system,
        case=case.name,
        variant=variant,
        micro_batch=case.micro_batch,
        layout=case.layout,
        **row,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument(
        "--suite",
        default="baseline,levers",
        help="comma list: baseline, levers, qlora, kubetune, parity, issue9, ddp, all",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_throughput.jsonl"))
    parser.add_argument(
        "--steps", type=int, default=10, help="optimizer steps per measurement (warmup included)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--deadline", type=float, default=1e9, help="seconds after which remaining cases are skipped"
    )
    parser.add_argument("--qkvo", action="store_true", help="also the q,k,v,o baseline case")
    parser.add_argument("--only", default="", help="substring filter on lever labels")
    parser.add_argument(
        "--work", default="/tmp/kubetune-bench", help="model directory and data for kubetune runs"
    )
    parser.add_argument("--parity-examples", type=int, default=420)
    parser.add_argument("--parity-lr", type=float, default=1e-3)
    parser.add_argument("--child-timeout", type=float, default=240)
    parser.add_argument("--kt-only", default="", help="'case:variant' names to run, separated by |")
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="kernel tables of the kubetune cases marked profile"
    )
    args = parser.parse_args(argv)
    suites = (
        {"baseline", "levers", "qlora", "kubetune", "parity", "issue9"}
        if args.suite == "all"
        else set(args.suite.split(","))
    )
    shape = SHAPES[args.shape]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.cache_size_limit = 64
    rec = Recorder(args.out, args.shape, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps(rec.common["versions"]), flush=True)

    need = args.steps * 16
    data = {
        "dense": make_examples(need * 2, shape, "dense", seed=1),
        "alpaca": make_examples(need * 8 * 2, shape, "alpaca", seed=2),
    }
    t = time.monotonic()
    model = build_model(shape, device)
    print(f"model built in {time.monotonic() - t:.1f}s", flush=True)

    if "baseline" in suites:
        for case, gc_on in baseline_cases(args):
            variant = f"trainer,sdpa,{'gc' if gc_on else 'no-gc'},{'qkvo' if case.targets == tuple(QKVO) else 'all-linear'}"
            guarded(
                rec,
                args.deadline,
                "hf_baseline",
                case,
                variant,
                lambda case=case, gc_on=gc_on: run_hf_baseline(
                    model, case, data[case.data], shape, args, gc_on, args.lr, args.steps, args.warmup
                ),
            )

    parity_train = make_examples(args.parity_examples, shape, "alpaca", seed=3)
    parity_heldout = make_examples(48, shape, "alpaca", seed=4)
    if "parity" in suites:
        case = Case("lora-all-alpaca-parity", "alpaca", "padded", 7)
        guarded(
            rec,
            args.deadline,
            "hf_baseline",
            case,
            "parity: trainer, mb 7 padded, one pass",
            lambda: run_hf_baseline(
                model,
                case,
                parity_train,
                shape,
                args,
                False,
                args.parity_lr,
                len(parity_train) // 7,
                args.warmup,
                heldout=parity_heldout,
            ),
        )

    def lever_run(case: Case):
        from peft import get_peft_model

        why = lv.missing(case.levers)
        if why:
            return rec.add(
                system="lever", case=case.name, variant=case.levers.label(), skipped="; ".join(why)
            )
        liger_patched = case.levers.liger_kernels
        original_rope = None
        if liger_patched:
            from transformers.models.llama import modeling_llama

            original_rope = modeling_llama.apply_rotary_pos_emb
        peft_model = get_peft_model(model, lora_config(case.targets))
        try:
            if liger_patched:
                lv.apply_liger_kernels(peft_model)
            return guarded(
                rec,
                args.deadline,
                "lever",
                case,
                case.levers.label(),
                lambda: run_levers(
                    peft_model, case, data[case.data], shape, args.lr, args.steps, args.warmup
                ),
            )
        finally:
            if liger_patched:
                lv.remove_liger_kernels(peft_model, original_rope)
            peft_model.unload()

    if "levers" in suites and device == "cuda":
        try:
            rec.add(
                system="check",
                case="lora-all-alpaca",
                variant="fast paths vs sdpa/plain CE",
                **check_paths(model, data["alpaca"], shape),
            )
        except Exception as exc:  # noqa: BLE001 - the measurements go on; the error is recorded
            traceback.print_exc()
            rec.add(
                system="check",
                case="lora-all-alpaca",
                variant="fast paths",
                error=f"{type(exc).__name__}: {exc}"[:400],
            )
    if "levers" in suites:
        for case in lever_cases():
            if args.only and args.only not in case.levers.label():
                continue
            lever_run(case)

    work = Path(args.work)
    kt_data: dict[str, Path] = {}
    if {"kubetune", "parity", "issue9", "ddp"} & suites:
        import gpu_kubetune as kt

        work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        kt.write_model_dir(model, work / "model")
        for kind in ("dense", "alpaca"):
            kt_data[kind] = kt.write_examples(data[kind][: KT_EXAMPLES[kind]], work / f"{kind}.jsonl")
        if "parity" in suites:
            kt_data["parity"] = kt.write_examples(parity_train, work / "parity.jsonl")
            kt.write_examples(parity_heldout, work / "heldout.jsonl")
        if "issue9" in suites:
            for _, _, _, shape_change in issue9_cases():
                if shape_change:
                    # Same weights, fewer layers: the first N decoder layers of the model in memory.
                    layers = model.model.layers
                    model.model.layers = layers[: shape_change["num_hidden_layers"]]
                    model.config.num_hidden_layers = len(model.model.layers)
                    suffix = "-".join(map(str, shape_change.values()))
                    kt.write_model_dir(model, work / f"model-{suffix}")
                    model.model.layers, model.config.num_hidden_layers = layers, len(layers)
        print(f"model directory and data written in {time.monotonic() - t:.1f}s", flush=True)

    if "qlora" in suites:
        cases = qlora_cases()
        why = lv.missing(cases[0].levers)
        if why:
            for case in cases:
                rec.add(system="lever", case=case.name, variant=case.levers.label(), skipped="; ".join(why))
        else:
            lv.quantize_nf4(model)
            reset_memory()
            print(f"nf4 model: {torch.cuda.memory_allocated() / 2**30:.1f} GiB", flush=True)
            for case in cases:
                lever_run(case)

    model = None  # the kubetune children load their own copy from disk
    reset_memory()
    log = args.out.parent / "kubetune_children.log"
    if {"kubetune", "parity", "issue9", "ddp"} & suites:
        import gpu_kubetune as kt

    parity_done: list[bool] = []

    def run_parity_child():
        parity_done.append(True)
        case = Case("lora-all-alpaca-parity", "alpaca", "packed", 1)
        config = kt.base_config(
            work / "model",
            kt_data["parity"],
            work,
            "parity",
            steps=1,
            micro_batch=1,
            lr=args.parity_lr,
            seq_len=shape["seq_len"],
        )
        config.update({"torch_compile": device == "cuda", "max_steps": None, "num_epochs": 1})
        spec = {"config": config, "warmup": args.warmup, "heldout": str(work / "heldout.jsonl")}
        guarded(
            rec,
            args.deadline,
            "kubetune",
            case,
            "parity: torch_compile, mb 1 packed row, one epoch",
            lambda: kubetune_row(
                run_child(spec, work, "parity", log, timeout=args.child_timeout),
                shape,
                parity_train,
                "alpaca",
                "parity",
            ),
        )
        parity_report(rec)

    def case_config(model_dir: Path, kind: str, name: str) -> dict:
        """The seed config for one kubetune case at this run's steps, learning rate and shape."""
        return kt.base_config(
            model_dir, kt_data[kind], work, name, steps=args.steps, micro_batch=2, lr=args.lr,
            seq_len=shape["seq_len"],
        )  # fmt: skip

    if "kubetune" in suites:
        for index, (name, kind, variant, overrides) in enumerate(kubetune_cases() + extra_kubetune_cases()):
            if args.kt_only and f"{name}:{variant}" not in args.kt_only.split("|"):
                continue
            if index == 4 and "parity" in suites:
                run_parity_child()
            case = Case(name, kind, "packed", overrides.get("micro_batch_size", 2))
            config = case_config(work / "model", kind, f"{name}-{len(rec.rows)}")
            overrides = dict(overrides)
            spec_extra = overrides.pop("_spec", {})
            config.update(overrides)
            if device == "cpu":  # the CPU smoke test checks the wiring, not the compiler
                config["torch_compile"] = False
            spec = {"config": config, "warmup": args.warmup, **spec_extra}
            if spec.pop("profile", False) and args.profile_dir:
                spec["profile"] = str(args.profile_dir / f"profile-{name}-{len(rec.rows)}.txt")
            guarded(
                rec,
                args.deadline,
                "kubetune",
                case,
                variant,
                lambda spec=spec, name=name, kind=kind, variant=variant: kubetune_row(
                    run_child(spec, work, f"{name}-{len(rec.rows)}", log, timeout=args.child_timeout),
                    shape,
                    data[kind],
                    kind,
                    variant,
                ),
            )

    if "parity" in suites and not parity_done:
        run_parity_child()

    if "ddp" in suites:  # issue 9: LoRA data parallel over every GPU of the machine, one process each
        gpus = max(1, torch.cuda.device_count())
        case = Case("lora-all-dense", "dense", "packed", 2)
        config = case_config(work / "model", "dense", f"ddp-{gpus}")
        config["torch_compile"] = device == "cuda"
        spec = {"config": config, "warmup": args.warmup, "torchrun": True, "nproc": gpus}

        def ddp_row():
            row = kubetune_row(
                run_child(spec, work, f"ddp-{gpus}", log, args.child_timeout),
                shape,
                data["dense"],
                "dense",
                "ddp",
            )
            # tokens_per_s counts every rank's tokens; MFU is per GPU.
            return {
                **row,
                "gpus": gpus,
                "mfu": row["mfu"] / gpus,
                "tokens_per_s_per_gpu": row["tokens_per_s"] / gpus,
            }

        guarded(rec, args.deadline, "kubetune", case, f"torch_compile,ddp x{gpus}", ddp_row)

    if "issue9" in suites:
        for name, variant, overrides, shape_change in issue9_cases():
            case = Case(name, "dense", "packed", 2)
            suffix = "-".join(map(str, shape_change.values()))
            model_dir = work / (f"model-{suffix}" if shape_change else "model")
            config = case_config(model_dir, "dense", name)
            config.update(overrides)
            if config["adapter"] is None:
                for key in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear"):
                    config.pop(key)
            spec = {"config": config, "warmup": args.warmup, "torchrun": True}
            guarded(
                rec,
                args.deadline,
                "kubetune",
                case,
                variant,
                lambda spec=spec, name=name, change=shape_change, full=overrides.get("adapter") is None: (
                    kubetune_row(
                        run_child(spec, work, name, log, timeout=args.child_timeout),
                        {**shape, **change},
                        data["dense"],
                        "dense",
                        name,
                        full=full,
                    )
                ),
            )

    print("\n" + rec.table(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
