"""ORPO, SimPO and KTO on kubetune's packed rows against trl's own trainers on the same batch."""

from __future__ import annotations

import pytest
import torch
from kubetune.config.preference import PreferenceObjective
from kubetune.train.loss import IGNORE_INDEX
from kubetune.train.preference import PreferenceLoss

from .test_preference import _decoder_inputs, _packed, _pairs, peft_model  # noqa: F401  (a fixture)

PAD = 0


def _side_batch(sequences, prefix: str) -> dict:
    """trl's ORPO/CPO layout of one side: right-padded ids, attention mask, labels on completions."""
    width = max(len(p) + len(c) for p, c in sequences)
    ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (prompt, completion) in enumerate(sequences):
        n = len(prompt) + len(completion)
        ids[i, :n] = torch.tensor(prompt + completion)
        attention[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(completion)
    return {f"{prefix}_input_ids": ids, f"{prefix}_attention_mask": attention, f"{prefix}_labels": labels}


def _trl_pair_batch(pairs) -> dict:
    return _side_batch([(p, c) for p, c, _ in pairs], "chosen") | _side_batch(
        [(p, r) for p, _, r in pairs], "rejected"
    )


def _ours(model, objective, ids, targets, positions, **extra):
    module = PreferenceLoss(model, objective).eval()
    with torch.no_grad():
        total = module(ids, targets, **extra, **_decoder_inputs(positions))
    return float(total) / ids.shape[0], module.take_metrics()


def _config(cls, tmp_path, **keys):
    return cls(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **keys)


def _assert_metrics(ours, theirs, names):
    for name in names:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name


PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_loss_and_metrics_match_trl(peft_model, beta, tmp_path):  # noqa: F811
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer = peft_model
    rows = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    trainer = ORPOTrainer(
        model=model,
        args=_config(ORPOConfig, tmp_path, beta=beta),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.padding_value = PAD
    model.eval()
    pairs = _pairs()
    with torch.no_grad():
        expected, theirs = trainer.get_batch_loss_metrics(model, _trl_pair_batch(pairs), train_eval="train")
    loss, ours = _ours(model, PreferenceObjective(rl="orpo", loss_type="orpo", beta=beta), *_packed(pairs))
    assert loss == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    _assert_metrics(ours, theirs, (*PAIR_METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen"))


@pytest.mark.parametrize("gamma,cpo_alpha", [(0.5, 1.0), (1.0, 0.0)])
def test_simpo_loss_and_metrics_match_trl(peft_model, gamma, cpo_alpha, tmp_path):  # noqa: F811
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    model, tokenizer = peft_model
    rows = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    args = _config(CPOConfig, tmp_path, loss_type="simpo", simpo_gamma=gamma, cpo_alpha=cpo_alpha, beta=0.2)
    trainer = CPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.padding_value = PAD
    model.eval()
    pairs = _pairs()
    with torch.no_grad():
        expected, theirs = trainer.get_batch_loss_metrics(model, _trl_pair_batch(pairs), train_eval="train")
    objective = PreferenceObjective(
        rl="simpo", loss_type="simpo", beta=0.2, simpo_gamma=gamma, cpo_alpha=cpo_alpha
    )
    loss, ours = _ours(model, objective, *_packed(pairs))
    assert loss == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    _assert_metrics(ours, theirs, PAIR_METRICS + (("nll_loss",) if cpo_alpha else ()))


# (prompt, completion, desirable): the KL completion of row i is row i-1's (the first takes the last's).
KTO_ROWS = [
    ([1, 20, 21, 22], [30, 31, 2], True),
    ([1, 23, 24], [41, 42, 43, 2], False),
    ([1, 25, 26, 27, 28], [33, 34, 35, 2], True),
    ([1, 29, 26], [44, 2], False),
]


def _kto_packed(rows):
    """kubetune's KTO layout: [prompt + completion][prompt + previous row's completion][pad]."""
    triples = [(p, c, rows[i - 1][1]) for i, (p, c, _) in enumerate(rows)]
    ids, targets, positions = _packed(triples)
    return ids, targets, positions, torch.tensor([label for *_, label in rows])


def _trl_kto_inputs(rows) -> dict:
    def side(sequences, prefix):
        width = max(len(p) + len(c) for p, c in sequences)
        ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
        attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, (prompt, comp) in enumerate(sequences):
            n = len(prompt) + len(comp)
            ids[i, :n] = torch.tensor(prompt + comp)
            attention[i, :n] = 1
            completion[i, len(prompt) : n] = 1
        return {
            f"{prefix}input_ids": ids,
            f"{prefix}attention_mask": attention,
            f"{prefix}completion_mask": completion,
        }

    inputs = side([(p, c) for p, c, _ in rows], "") | side(
        [(p, rows[i - 1][1]) for i, (p, _, _) in enumerate(rows)], "KL_"
    )
    return inputs | {"label": torch.tensor([label for *_, label in rows])}


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.2, 1.3)])
def test_kto_loss_and_metrics_match_trl(peft_model, weights, tmp_path):  # noqa: F811
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = peft_model
    rows = Dataset.from_dict({"prompt": ["a", "b"], "completion": ["c", "d"], "label": [True, False]})
    args = _config(
        KTOConfig,
        tmp_path,
        beta=0.3,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        per_device_train_batch_size=4,
    )
    trainer = KTOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    if "ref" in model.peft_config:  # trl's copy of a re-trained adapter; kubetune's reference is the base
        model.delete_adapter("ref")
    model.eval()
    with torch.no_grad():
        expected = trainer._compute_loss(model, _trl_kto_inputs(KTO_ROWS), return_outputs=False)
    theirs = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    ids, targets, positions, desirable = _kto_packed(KTO_ROWS)
    objective = PreferenceObjective(
        rl="kto", loss_type="kto", beta=0.3, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    loss, ours = _ours(model, objective, ids, targets, positions, desirable=desirable)
    assert loss == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    _assert_metrics(ours, theirs, ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                                   "logps/rejected", "kl"))  # fmt: skip
    assert abs(ours["rewards/margins"]) > 1e-4  # the adapter is on: not a comparison of zeros


def test_orpo_and_simpo_need_no_reference_and_kto_uses_precomputed_log_probs(peft_model):  # noqa: F811
    """No reference pass where the loss has none, and none in a step whose rows carry ref_logps."""
    model, _ = peft_model
    ids, targets, positions, desirable = _kto_packed(KTO_ROWS)
    kto = PreferenceLoss(model, PreferenceObjective(rl="kto", loss_type="kto", beta=0.1)).eval()
    with torch.no_grad():
        ref_logps = kto.reference_logps(ids, targets, positions, _decoder_inputs(positions))
        computed = kto(ids, targets, desirable=desirable, **_decoder_inputs(positions))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the reference ran in a training step")

    kto.reference_logps = refuse
    with torch.no_grad():
        precomputed = kto(
            ids, targets, desirable=desirable, ref_logps=ref_logps, **_decoder_inputs(positions)
        )
    assert float(precomputed) == pytest.approx(float(computed), rel=1e-6)
    for rl in ("orpo", "simpo"):
        module = PreferenceLoss(model, PreferenceObjective(rl=rl, loss_type=rl, beta=0.1)).eval()
        module.reference_logps = refuse
        with torch.no_grad():
            module(*_packed(_pairs())[:2], **_decoder_inputs(_packed(_pairs())[2]))


def test_orpo_nll_covers_the_prompt_and_chosen_answer_only():
    from kubetune.train.preference import chosen_targets

    ids, targets, positions = _packed(_pairs())
    scored = torch.tensor([True, False, True])
    nll = chosen_targets(ids, positions, scored)
    prompt, chosen, _ = _pairs()[0]
    assert nll[0][nll[0] != IGNORE_INDEX].tolist() == (prompt + chosen)[1:]
    assert (nll[1] == IGNORE_INDEX).all()  # a padding row of an eval batch
    # the chosen answer's trained targets are among them; the rejected segment's are not
    chosen_part = (targets[0] != IGNORE_INDEX) & (torch.cumsum((positions[0] == 0).long(), 0) == 1)
    assert torch.equal(nll[0][chosen_part], targets[0][chosen_part])
    assert int((nll[0] != IGNORE_INDEX).sum()) == len(prompt) + len(chosen) - 1


@pytest.mark.parametrize("rl", ["orpo", "simpo", "kto", "dpo"])
def test_a_batch_of_padding_rows_adds_no_loss_and_no_metric(peft_model, rl):  # noqa: F811
    """An eval batch padded with masked rows (no trained token) on a rank: loss 0, no NaN, no metric."""
    model, _ = peft_model
    ids, targets, positions, desirable = _kto_packed(KTO_ROWS)
    loss_type = "sigmoid" if rl == "dpo" else rl
    module = PreferenceLoss(model, PreferenceObjective(rl=rl, loss_type=loss_type, beta=0.1)).eval()
    with torch.no_grad():
        total = module(
            ids, torch.full_like(targets, IGNORE_INDEX), desirable=desirable, **_decoder_inputs(positions)
        )
    assert float(total) == 0.0
    assert module.take_metrics() is None
