"""The step plan and the data order: the same global batch trains on the same rows however split."""

import pytest
from kubetune.data import PackedCollator
from kubetune.train.batches import Collate, eval_batches, make_plan, step_indices
from kubetune.train.errors import UserError


class Cfg:
    micro_batch_size = 2
    gradient_accumulation_steps = 2
    num_epochs = None
    max_steps = None
    eval_steps = None
    evals_per_epoch = None
    save_steps = None
    saves_per_epoch = None
    save_strategy = None
    eval_strategy = None
    logging_steps = 1
    eval_batch_size = None
    dataloader_num_workers = 0
    dataloader_prefetch_factor = None
    dataloader_pin_memory = False
    group_by_length = False
    seed = 3

    def __init__(self, **keys):
        self.__dict__.update(keys)


def test_same_rows_per_step_whatever_the_split_between_processes_and_accumulation():
    single = make_plan(Cfg(micro_batch_size=2, gradient_accumulation_steps=2), 50, 1, has_eval=False)
    ddp = make_plan(Cfg(micro_batch_size=2, gradient_accumulation_steps=1), 50, 2, has_eval=False)
    assert single.steps_per_epoch == ddp.steps_per_epoch == 12  # 50 // 4: the last 2 rows wait for next epoch
    one = step_indices(50, 1, single, seed=3, rank=0, world_size=1, micro_batch_size=2)
    ranks = [step_indices(50, 1, ddp, seed=3, rank=r, world_size=2, micro_batch_size=2) for r in (0, 1)]
    for step in range(12):
        rows_single = sorted(i for mb in one[step] for i in mb)
        rows_ddp = sorted(i for r in (0, 1) for mb in ranks[r][step] for i in mb)
        assert rows_single == rows_ddp and len(rows_single) == 4
    every = [i for step in one for mb in step for i in mb]
    assert len(set(every)) == 48  # no row twice in an epoch
    assert every != [
        i
        for step in step_indices(50, 2, single, seed=3, rank=0, world_size=1, micro_batch_size=2)
        for mb in step
        for i in mb
    ]  # a new order each epoch


def test_plan_lengths_and_intervals():
    plan = make_plan(Cfg(num_epochs=2.5, eval_steps=0.25, saves_per_epoch=2), 40, 1, has_eval=True)
    assert (plan.steps_per_epoch, plan.total_steps) == (10, 25)
    assert plan.eval_every == 7  # ceil(0.25 * 25)
    assert plan.save_every == 5
    assert make_plan(Cfg(num_epochs=3, max_steps=4), 40, 1, has_eval=False).total_steps == 4
    assert make_plan(Cfg(max_steps=100), 40, 1, has_eval=False).total_steps == 100
    assert make_plan(Cfg(evals_per_epoch=3), 40, 1, has_eval=False).eval_every is None
    assert make_plan(Cfg(), 40, 1, has_eval=False).save_every == 10  # default: once per epoch


def test_transformers_strategies_set_the_intervals():
    # 40 rows, 4 rows per step: 10 steps per epoch, 30 in all
    def plan(**keys):
        return make_plan(Cfg(num_epochs=3, **keys), 40, 1, has_eval=True)

    assert plan(save_strategy="no").save_every is None  # no periodic checkpoint at all
    assert plan(save_strategy="epoch").save_every == 10
    assert plan(save_strategy="steps", save_steps=4).save_every == 4
    assert plan(save_strategy="steps").save_every == 500  # transformers' default save_steps
    assert plan(eval_strategy="no", eval_steps=2).eval_every is None
    assert plan(eval_strategy="epoch").eval_every == 10
    assert (
        plan(eval_strategy="steps", logging_steps=3).eval_every == 3
    )  # transformers: eval_steps = logging_steps
    assert plan(eval_strategy="steps", eval_steps=6).eval_every == 6
    assert plan().eval_every is None and plan().save_every == 10  # unset: kubetune's defaults


def test_too_little_data_for_one_step_is_bad_input():
    with pytest.raises(UserError) as err:
        make_plan(Cfg(micro_batch_size=4, gradient_accumulation_steps=4), 10, 2, has_eval=False)
    assert "32" in err.value.problem and "micro_batch_size" in err.value.fix


def test_eval_shards_run_the_same_number_of_batches_and_count_each_row_once():
    rows = [{"input_ids": [1, 2, 3 + i], "labels": [1, 2, 3 + i]} for i in range(5)]
    collate = Collate(PackedCollator(pad_token_id=0))
    shards = [
        list(eval_batches(rows, collate, Cfg(), rank=r, world_size=2, pin_memory=False)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 2
    trained = sum(batch["n_trained"] for shard in shards for batch in shard)
    assert trained == 5 * 2  # two targets per 3-token row; the padding row on rank 1 counts nothing


# -- group_by_length ---------------------------------------------------------------------------------


def _padding(steps, lengths) -> int:
    """Padding tokens the collator adds (each micro-batch padded to its longest row)."""
    return sum(max(lengths[i] for i in mb) * len(mb) - sum(lengths[i] for i in mb) for s in steps for mb in s)


def test_group_by_length_batches_rows_of_similar_length_and_pads_far_less():
    import random

    lengths = [random.Random(i).randint(8, 512) for i in range(400)]
    plan = make_plan(Cfg(micro_batch_size=4, gradient_accumulation_steps=2), 400, 2, has_eval=False)

    def epoch(grouped: bool, epoch: int = 1):
        kwargs = {"lengths": lengths} if grouped else {}
        return [
            step_indices(400, epoch, plan, seed=3, rank=r, world_size=2, micro_batch_size=4, **kwargs)
            for r in (0, 1)
        ]

    default, grouped = epoch(False), epoch(True)
    before = sum(_padding(ranks, lengths) for ranks in default)
    after = sum(_padding(ranks, lengths) for ranks in grouped)
    assert after < before / 5, (before, after)  # measured: see the test's output on failure
    # Every row once per epoch, the same number of steps; the longest row comes first (an OOM shows at once).
    rows = sorted(i for ranks in grouped for step in ranks for mb in step for i in mb)
    assert rows == list(range(400)) and len(grouped[0]) == len(default[0]) == plan.steps_per_epoch
    assert lengths[grouped[0][0][0][0]] == max(lengths)
    # Still random: megabatches are drawn from the seeded permutation, a new one each epoch.
    assert epoch(True, 2) != grouped and epoch(True, 1) == grouped


def test_group_by_length_reads_lengths_from_the_arrow_column():
    import datasets
    from kubetune.train.batches import row_lengths

    data = datasets.Dataset.from_dict({"input_ids": [[1, 2], [1], [1, 2, 3, 4]]}).select([2, 0, 1])
    assert row_lengths(data) == [4, 2, 1]


@pytest.mark.parametrize("key", ["sample_packing", "pad_to_sequence_len"])
def test_group_by_length_with_rows_of_one_width_is_refused_with_the_fix(key):
    from kubetune.config import validate_mapping

    base = {
        "base_model": "m",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "sequence_len": 256,
        "datasets": [{"path": "d", "type": "alpaca"}],
        "group_by_length": True,
    }
    assert validate_mapping(base) == []
    (problem,) = validate_mapping({**base, key: True})
    assert problem.path == "group_by_length" and f"{key}: false" in problem.fix


def test_train_windows_honour_group_by_length():
    """The loop's batch stream: the same rows, with the padding of the collated batches cut."""
    import datasets
    from kubetune.train.batches import train_windows

    lengths = [3 + (i * 37) % 60 for i in range(64)]
    data = datasets.Dataset.from_dict(
        {"input_ids": [[5] * n for n in lengths], "labels": [[5] * n for n in lengths]}
    )
    collate = Collate(PackedCollator(pad_token_id=0))
    padding = {}
    for grouped in (False, True):
        cfg = Cfg(micro_batch_size=4, gradient_accumulation_steps=2, group_by_length=grouped)
        plan = make_plan(cfg, len(data), 1, has_eval=False)
        windows = train_windows(
            data, plan, collate, cfg, epoch=0, step_in_epoch=0, rank=0, world_size=1, pin_memory=False
        )
        batches = [mb for _ in range(plan.steps_per_epoch) for mb in next(windows)]
        assert sum(b["n_tokens"] for b in batches) == sum(lengths)
        padding[grouped] = sum(b["input_ids"].numel() - b["n_tokens"] for b in batches)
    assert padding[True] < padding[False] / 3, padding  # measured 1196 -> 356 padding tokens
