"""The objective: next-token targets that respect packing, and token-sum normalisation."""

import torch
from kubetune.train.loss import IGNORE_INDEX, causal_lm_loss_sum, shift_targets
from torch import nn


def test_targets_are_next_labels_and_never_cross_examples():
    labels = torch.tensor([[-100, 5, 6, -100, 8, 9]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two packed examples of 3 tokens
    targets = shift_targets(labels, positions)
    # position 2 would predict the first token of the next example: ignored
    assert targets.tolist() == [[5, 6, IGNORE_INDEX, 8, 9, IGNORE_INDEX]]


def test_loss_sum_equals_mean_times_count_and_skips_untrained_positions():
    torch.manual_seed(0)
    head = nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8)
    targets = torch.tensor([[1, -100, 3, -100, 4], [-100, -100, 7, 2, -100]])
    total = causal_lm_loss_sum(hidden, targets, head)
    logits = head(hidden)
    expected = nn.functional.cross_entropy(
        logits.view(-1, 11), targets.view(-1), ignore_index=-100, reduction="mean"
    )
    assert torch.allclose(total / (targets != -100).sum(), expected, atol=1e-6)


def test_gradient_does_not_depend_on_how_tokens_fall_into_micro_batches():
    """Dividing the token sum by the step's trained tokens weighs every token equally: splitting the
    same tokens into micro-batches of unequal size gives the full-batch gradient (a per-micro-batch
    mean would not)."""
    torch.manual_seed(0)
    head = nn.Linear(8, 11, bias=False)
    hidden = torch.randn(1, 12, 8)
    targets = torch.randint(0, 11, (1, 12))
    targets[0, :7] = IGNORE_INDEX  # micro-batch 1 trains 1 token of 8, micro-batch 2 trains 4 of 4

    full = causal_lm_loss_sum(hidden, targets, head) / (targets != IGNORE_INDEX).sum()
    (reference,) = torch.autograd.grad(full, head.weight)

    count = (targets != IGNORE_INDEX).sum()
    head.weight.grad = None
    for part in (slice(0, 8), slice(8, 12)):
        (causal_lm_loss_sum(hidden[:, part], targets[:, part], head) / count).backward()
    assert torch.allclose(head.weight.grad, reference, atol=1e-6)

    head.weight.grad = None
    for part in (slice(0, 8), slice(8, 12)):  # the mean-of-means the normalisation avoids
        piece = targets[:, part]
        (causal_lm_loss_sum(hidden[:, part], piece, head) / (piece != IGNORE_INDEX).sum() / 2).backward()
    assert not torch.allclose(head.weight.grad, reference, atol=1e-4)
