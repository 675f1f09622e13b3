"""kubetune's pair losses on packed rows against trl's DPOTrainer on the same pairs."""

from __future__ import annotations

import pytest
import torch
from kubetune.data import block_causal_mask
from kubetune.train.loss import IGNORE_INDEX, shift_targets
from kubetune.train.preference import PreferenceLoss


def _objective(loss_type: str, beta: float, use_weighting: bool = False, label_smoothing: float = 0.0):
    from kubetune.config.preference import PreferenceObjective

    return PreferenceObjective(
        rl="dpo", loss_type=loss_type, beta=beta, use_weighting=use_weighting, label_smoothing=label_smoothing
    )


def _pairs():
    # (prompt, chosen, rejected) token ids of different lengths, so padding and segment sums matter.
    return [
        ([1, 20, 21, 22], [30, 31, 2], [40, 2]),
        ([1, 23, 24], [32, 2], [41, 42, 43, 2]),
        ([1, 25, 26, 27, 28], [33, 34, 35, 2], [44, 45, 2]),
    ]


def _packed(pairs):
    """kubetune's layout: one row per pair, [prompt+chosen][prompt+rejected][pad], labels on completions."""
    width = max(2 * len(p) + len(c) + len(r) for p, c, r in pairs) + 2
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    positions = torch.zeros_like(ids)
    for b, (prompt, chosen, rejected) in enumerate(pairs):
        row, row_labels, row_pos = [], [], []
        for completion in (chosen, rejected):
            row += prompt + completion
            row_labels += [IGNORE_INDEX] * len(prompt) + completion
            row_pos += list(range(len(prompt) + len(completion)))
        pad = width - len(row)
        ids[b] = torch.tensor(row + [0] * pad)
        labels[b] = torch.tensor(row_labels + [IGNORE_INDEX] * pad)
        positions[b] = torch.tensor(row_pos + list(range(pad)))
    return ids, shift_targets(labels, positions), positions


def _trl_inputs(pairs):
    """trl's layout: [chosen rows; rejected rows], right-padded, completion_mask on completions."""
    sequences = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    width = max(len(p) + len(c) for p, c in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for i, (prompt, comp) in enumerate(sequences):
        n = len(prompt) + len(comp)
        ids[i, :n] = torch.tensor(prompt + comp)
        attention[i, :n] = 1
        completion[i, len(prompt) : n] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def _decoder_inputs(positions):
    """What the loop passes on CPU (SDPA): positions and the block-causal mask of the segments."""
    return {"position_ids": positions, "attention_mask": block_causal_mask(positions)}


@pytest.fixture(scope="module")
def peft_model():
    from kubetune.tiny import alpaca_rows, build_tiny_llama, train_tokenizer
    from peft import LoraConfig, get_peft_model

    tokenizer = train_tokenizer(" ".join(row.values()) for row in alpaca_rows(64))
    base = build_tiny_llama(tokenizer, seed=0)
    # Non-zero adapter weights: the policy differs from the reference, so rewards are not all zero.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    model.eval()  # no dropout: both sides see the same function
    return model, tokenizer


def _trl_loss(
    model,
    tokenizer,
    pairs,
    loss_type,
    beta,
    tmp_path,
    *,
    use_weighting=False,
    label_smoothing=0.0,
    weights=None,
):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type=[loss_type] if isinstance(loss_type, str) else list(loss_type),
        loss_weights=weights,
        report_to="none",
        use_cpu=True,
        bf16=False,
        use_weighting=use_weighting,
        label_smoothing=label_smoothing,
    )
    rows = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    # Given a PeftModel, trl keeps a frozen copy of its adapter ("ref") as the reference of a
    # re-trained adapter; kubetune trains a fresh one, whose reference is the base model, which is
    # trl's reference when no "ref" adapter exists (adapters disabled).
    model.delete_adapter("ref")
    model.eval()
    with torch.no_grad():
        loss = trainer._compute_loss(model, _trl_inputs(pairs), return_outputs=False)
    # the model is in eval mode (no dropout): trl files the metrics under "eval"
    metrics = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    return float(loss), metrics


@pytest.mark.parametrize(
    "loss_type,beta,use_weighting,smoothing",
    [
        ("sigmoid", 0.1, False, 0.0),
        ("sigmoid", 0.5, False, 0.0),
        ("ipo", 0.1, False, 0.0),
        ("sigmoid", 0.1, True, 0.0),  # dpo_use_weighting
        ("ipo", 0.1, True, 0.0),
        ("robust", 0.5, False, 0.2),  # dpo_label_smoothing
        ("exo_pair", 0.5, False, 0.001),
    ],
)
def test_pair_loss_and_rewards_match_trl(peft_model, loss_type, beta, use_weighting, smoothing, tmp_path):
    model, tokenizer = peft_model
    pairs = _pairs()
    ids, targets, positions = _packed(pairs)
    module = PreferenceLoss(model, _objective(loss_type, beta, use_weighting, smoothing))
    module.eval()
    with torch.no_grad():
        loss_sum = module(ids, targets, **_decoder_inputs(positions))
        plain = PreferenceLoss(model, _objective("ipo" if loss_type == "ipo" else "sigmoid", beta))(
            ids, targets, **_decoder_inputs(positions)
        )
    ours = module.take_metrics()
    expected_loss, theirs = _trl_loss(
        model,
        tokenizer,
        pairs,
        loss_type,
        beta,
        tmp_path,
        use_weighting=use_weighting,
        label_smoothing=smoothing,
    )
    if use_weighting or smoothing:  # the key changes the loss (not the rewards)
        assert abs(float(loss_sum) - float(plain)) > 0.01 * float(plain)

    assert float(loss_sum) / len(pairs) == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-6), name
    for name in ("logps/chosen", "logps/rejected"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    assert abs(ours["rewards/margins"]) > 1e-4  # the adapter is on: the comparison is not of zeros
    assert module.take_metrics() is None  # taken: the next log line starts from nothing


@pytest.mark.parametrize(
    "mix,use_weighting",
    # trl's WPO weighting fails on its sft term (an in-place product on an expanded tensor): the
    # weighted case has none, and the config refuses dpo_use_weighting with sft.
    [((("sigmoid", 1.0), ("sft", 0.5)), False), ((("ipo", 0.3), ("sigmoid", 1.0)), True)],
)
def test_a_weighted_list_of_loss_types_matches_trl(peft_model, mix, use_weighting, tmp_path):
    """Axolotl's dpo_loss_type list with dpo_loss_weights (RPO is [sigmoid, sft]): trl's loss_type /
    loss_weights on the same batch; it differs from the sigmoid loss alone."""
    from dataclasses import replace

    model, tokenizer = peft_model
    pairs = _pairs()
    ids, targets, positions = _packed(pairs)
    objective = replace(_objective(mix[0][0], 0.1, use_weighting), dpo_mix=mix)
    module = PreferenceLoss(model, objective).eval()
    with torch.no_grad():
        loss_sum = module(ids, targets, **_decoder_inputs(positions))
        alone = PreferenceLoss(model, _objective("sigmoid", 0.1))(ids, targets, **_decoder_inputs(positions))
    types, weights = zip(*mix, strict=True)
    expected, _ = _trl_loss(
        model, tokenizer, pairs, types, 0.1, tmp_path, use_weighting=use_weighting, weights=list(weights)
    )
    assert float(loss_sum) / len(pairs) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert abs(float(loss_sum) - float(alone)) > 0.1


def test_reference_is_the_base_with_the_adapter_disabled(peft_model):
    from kubetune.tiny import build_tiny_llama

    model, tokenizer = peft_model
    plain = build_tiny_llama(tokenizer, seed=0).eval()  # the same base weights, never wrapped by peft
    ids, targets, positions = _packed(_pairs())
    module = PreferenceLoss(model, _objective("sigmoid", 0.1))
    module.eval()
    with torch.no_grad():
        policy, _ = module._logps(ids, targets, positions, _decoder_inputs(positions))
        with module.reference():
            reference, _ = module._logps(ids, targets, positions, _decoder_inputs(positions))
        base, _ = PreferenceLoss(plain, _objective("sigmoid", 0.1))._logps(
            ids, targets, positions, _decoder_inputs(positions)
        )
    assert not torch.allclose(policy, reference)
    assert torch.allclose(reference, base)


def test_a_model_without_adapter_has_no_reference(peft_model):
    from kubetune.tiny import build_tiny_llama

    _, tokenizer = peft_model
    ids, targets, positions = _packed(_pairs())
    with pytest.raises(ValueError, match="peft adapter"):
        PreferenceLoss(build_tiny_llama(tokenizer), _objective("sigmoid", 0.1))(
            ids, targets, position_ids=positions
        )


def test_a_row_without_trained_tokens_is_no_pair(peft_model):
    """Eval batches pad the last ranks with masked rows: they add no loss and no rewards."""
    model, _ = peft_model
    ids, targets, positions = _packed(_pairs())
    masked = targets.clone()
    masked[1] = IGNORE_INDEX
    module = PreferenceLoss(model, _objective("sigmoid", 0.1)).eval()
    with torch.no_grad():
        full = module(ids[[0, 2]], targets[[0, 2]], **_decoder_inputs(positions[[0, 2]]))
        expected = module.take_metrics()
        padded = module(ids, masked, **_decoder_inputs(positions))
        got = module.take_metrics()
    assert float(padded) == pytest.approx(float(full), rel=1e-5)
    assert got == pytest.approx(expected, rel=1e-5)
    assert module.metric_sums == {}  # taken


def test_reward_means_reach_the_trackers_under_trl_names():
    from kubetune.train.progress import Progress
    from kubetune.train.tracking import metrics_of

    train = Progress(step=3, total_steps=9, epoch=0.1, loss=0.5, rewards={"rewards/margins": 0.25})
    assert metrics_of(train)["train/rewards/margins"] == 0.25
    assert train.log_line()["rewards/margins"] == 0.25
    evaluation = Progress(step=3, total_steps=9, epoch=0.1, event="eval", eval_loss=0.4,
                          rewards={"eval_rewards/accuracies": 0.75})  # fmt: skip
    assert metrics_of(evaluation) == {"eval/loss": 0.4, "eval/rewards/accuracies": 0.75}
    # status.progress carries the latest train line's rewards on every report, an eval one too
    evaluation.train_rewards = {"rewards/margins": 0.25, "rewards/accuracies": 1.0, "kl": 0.5}
    assert evaluation.status()["rewards"] == {"margins": 0.25, "accuracies": 1.0}
