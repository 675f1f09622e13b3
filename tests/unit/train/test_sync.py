"""The loop's device values read without a per-step sync: the step's token counts and stop flag."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from kubetune.train import sync
from kubetune.train.loop import StopFlag


def test_step_counts_of_several_ranks_are_reduced_once_and_read_after_the_step():
    """The loss scale takes the reduced count as a tensor; the host reads the counts only in resolve()."""
    reduced = []

    def reduce(tensor, reduction):
        assert reduction == "sum"
        reduced.append(tensor.clone())
        return tensor * 2  # two ranks with the same window

    acc = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)
    window = [{"n_trained": 10, "n_tokens": 16}, {"n_trained": 5, "n_tokens": 16}]
    stop = StopFlag()
    counts = sync.StepCounts(acc, window, stop)
    assert len(reduced) == 1 and reduced[0].tolist() == [15.0, 32.0, 0.0]
    scale_source = counts.trained_for_scale()
    assert isinstance(scale_source, torch.Tensor) and float(scale_source) == 30.0
    stop.requested = True  # after the all-reduce: this step's agreed flag does not carry it
    assert counts.resolve() == (30.0, 64.0, False)


def test_a_single_process_stops_after_the_step_in_which_sigterm_arrived():
    acc = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    stop = StopFlag()
    counts = sync.StepCounts(acc, [{"n_trained": 0, "n_tokens": 4}], stop)
    assert counts.trained_for_scale() == 1.0  # never divides by zero trained tokens
    stop.requested = True
    assert counts.resolve() == (0.0, 4.0, True)


def test_ranks_of_a_tensor_parallel_group_count_their_shared_rows_once():
    """2 ranks of one tp group hold the same 10 trained tokens and the same loss: the sums are 10 and the
    loss once, not twice (the reduce sums over all ranks)."""
    acc = SimpleNamespace(
        num_processes=2, device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor * 2
    )
    window = [{"n_trained": 10, "n_tokens": 16}]
    counts = sync.StepCounts(acc, window, StopFlag(), group=2)
    assert counts.resolve() == (10.0, 16.0, False)
    assert float(counts.trained_for_scale()) == 10.0
