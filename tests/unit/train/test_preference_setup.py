"""The reference policy chosen at setup: a frozen copy for a full fine-tune, precomputed log-probs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kubetune.config.preference import PreferenceObjective
from kubetune.train.attention import AttentionBackend
from kubetune.train.preference_setup import REF_COLUMN, preference_module

DPO = PreferenceObjective(rl="dpo", loss_type="sigmoid", beta=0.1)


@pytest.fixture(scope="module")
def tiny_pairs():
    from kubetune.data import PackedCollator
    from kubetune.data.formats.preference import ChatmlIntel
    from kubetune.data.pairs import pair_rows
    from kubetune.tiny import build_tiny_llama, preference_rows, train_tokenizer
    from kubetune.train.batches import Collate

    rows = preference_rows(12, seed=3)
    tokenizer = train_tokenizer(" ".join(row.values()) for row in rows)
    train, _ = pair_rows(ChatmlIntel(tokenizer, {}).tokenize_rows(rows[:8]))
    evaluation, _ = pair_rows(ChatmlIntel(tokenizer, {}).tokenize_rows(rows[8:]))
    collate = Collate(PackedCollator(tokenizer.pad_token_id), per_pair=True)
    return tokenizer, train, evaluation, collate, lambda: build_tiny_llama(tokenizer, seed=0)


def _cfg(**keys):
    base = {
        "adapter": None,
        "rl": "dpo",
        "precompute_ref_log_probs": False,
        "eval_batch_size": None,
        "micro_batch_size": 3,
        "base_model": "tiny",
    }
    return SimpleNamespace(**(base | keys))


def _setup(cfg, model, tiny_pairs, path: Path):
    from kubetune.data.pipeline import PreparedData

    _, train, evaluation, collate, _ = tiny_pairs
    data = PreparedData(train=train, eval=evaluation, path=path)
    accelerator = SimpleNamespace(device=torch.device("cpu"), process_index=0)
    module = preference_module(
        cfg,
        DPO,
        model,
        data,
        collate=collate,
        backend=AttentionBackend("sdpa", "sdpa"),
        accelerator=accelerator,
    )
    return module, data


def _loss(module, collate, rows, **extra):
    from kubetune.data import block_causal_mask

    batch = collate([rows[i] for i in range(len(rows))])
    inputs = {k: batch[k] for k in ("desirable", REF_COLUMN) if k in batch} | extra
    position_ids = batch["position_ids"]
    return module(
        batch["input_ids"],
        batch["targets"],
        position_ids=position_ids,
        attention_mask=block_causal_mask(position_ids),
        **inputs,
    )


def test_a_full_fine_tune_compares_with_a_frozen_copy_of_the_model_as_loaded(tiny_pairs, tmp_path):
    _, train, _, collate, build = tiny_pairs
    model = build()
    module, _ = _setup(_cfg(), model, tiny_pairs, tmp_path)
    assert all(p.requires_grad for p in model.parameters())  # the trained model is not frozen
    assert len(list(module.parameters())) == len(list(model.parameters()))  # the copy is no parameter
    module.eval()
    with torch.no_grad():
        assert float(_loss(module, collate, train)) / len(train) == pytest.approx(0.6931, abs=1e-4)
        for parameter in model.parameters():  # a "training step" moves the policy only
            parameter.add_(0.01 * torch.randn_like(parameter))
        moved = float(_loss(module, collate, train)) / len(train)
    metrics = module.take_metrics()
    assert abs(moved - 0.6931) > 1e-3 and abs(metrics["rewards/margins"]) > 1e-4
    plain = build().eval()  # the reference is still the model as loaded
    with torch.no_grad(), module.reference() as reference:
        for a, b in zip(reference.parameters(), plain.parameters(), strict=True):
            assert torch.equal(a, b)


def test_precomputed_reference_log_probs_are_cached_and_replace_the_reference(tiny_pairs, tmp_path):
    _, _, _, collate, build = tiny_pairs
    model = build()
    live, live_data = _setup(_cfg(), model, tiny_pairs, tmp_path)  # the frozen copy, computed each step
    cfg = _cfg(precompute_ref_log_probs=True)
    module, data = _setup(cfg, model, tiny_pairs, tmp_path)
    assert not module._frozen  # no second copy is kept
    assert REF_COLUMN in data.train.column_names and REF_COLUMN in data.eval.column_names
    [cached] = list(tmp_path.glob("ref-logps-*"))
    assert (cached / "train.npy").is_file() and (cached / "eval.npy").is_file()

    with torch.no_grad():
        for parameter in model.parameters():  # training moves the policy away from the reference
            parameter.add_(0.01 * torch.randn_like(parameter))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the reference ran in a training step")

    module.reference_logps = refuse
    module.eval(), live.eval()
    with torch.no_grad():
        for rows, live_rows in ((data.train, live_data.train), (data.eval, live_data.eval)):
            precomputed = _loss(module, collate, rows)
            assert float(precomputed) == pytest.approx(float(_loss(live, collate, live_rows)), rel=1e-5)
    assert module.take_metrics() == pytest.approx(live.take_metrics(), rel=1e-4, abs=1e-6)

    # A second run of the same data and model reads the cache: the reference is not run again.
    import kubetune.train.preference_setup as setup_module

    calls = []
    original = setup_module.reference_logps
    setup_module.reference_logps = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        _, again = _setup(cfg, build(), tiny_pairs, tmp_path)
    finally:
        setup_module.reference_logps = original
    assert calls == [] and again.train[REF_COLUMN] == data.train[REF_COLUMN]


def test_trl_sync_ref_model_mixes_the_frozen_reference_towards_the_policy(tiny_pairs, tmp_path):
    """TR-DPO: every ref_model_sync_steps optimizer steps the reference becomes alpha x policy +
    (1 - alpha) x reference; the synced reference is registered for checkpoints (resume continues it)."""
    from dataclasses import replace

    from accelerate import Accelerator
    from kubetune.data.pipeline import PreparedData

    Accelerator(cpu=True)  # trl's sync reads accelerate's state, as in a run (reset after each test)

    _, train, evaluation, collate, build = tiny_pairs
    model = build()
    registered = []
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), process_index=0, register_for_checkpointing=registered.append
    )
    module = preference_module(
        _cfg(),
        replace(DPO, ref_sync=(0.5, 2)),
        model,
        PreparedData(train=train, eval=evaluation, path=tmp_path),
        collate=collate,
        backend=AttentionBackend("sdpa", "sdpa"),
        accelerator=accelerator,
    )
    assert registered == [module.frozen_reference]
    module.eval()
    loaded = [p.detach().clone() for p in module.frozen_reference.parameters()]
    with torch.no_grad():
        for parameter in model.parameters():  # a training step moves the policy
            parameter.add_(0.01 * torch.randn_like(parameter))
        before = float(_loss(module, collate, train))
    assert not module.after_optimizer_step(1)  # not a sync step: the reference is unchanged
    for now, then in zip(module.frozen_reference.parameters(), loaded, strict=True):
        assert torch.equal(now, then)
    assert module.after_optimizer_step(2)
    for now, then, policy in zip(
        module.frozen_reference.parameters(), loaded, model.parameters(), strict=True
    ):
        torch.testing.assert_close(now, 0.5 * then + 0.5 * policy.detach())
    with torch.no_grad():
        after = float(_loss(module, collate, train))
    assert abs(after - before) > 1e-4  # the loss compares the policy with the moved reference
    plain = _setup(_cfg(), build(), tiny_pairs, tmp_path)[0]
    assert plain.frozen_reference is not None and not plain.after_optimizer_step(64)  # no sync asked
