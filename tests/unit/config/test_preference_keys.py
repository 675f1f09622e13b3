"""rl: dpo / ipo / orpo / kto / simpo: the keys accepted, read as trl's settings, and what is refused."""

from __future__ import annotations

import pytest
from kubetune.config import load_config, validate_mapping

PAIRS = {"path": "pairs.jsonl", "type": "chatml.intel"}


def _dpo(seed_mapping, **keys) -> dict:
    mapping = {**seed_mapping, "datasets": [PAIRS], "rl": "dpo", "sample_packing": False}
    mapping |= keys
    return {key: value for key, value in mapping.items() if value is not None}


def _paths(mapping) -> list[str]:
    return [problem.path for problem in validate_mapping(mapping)]


def test_axolotl_dpo_keys_are_accepted_and_read_as_trl_loss_and_beta(seed_mapping):
    assert _paths(_dpo(seed_mapping)) == []
    assert _paths(_dpo(seed_mapping, val_set_size=0.1)) == []  # evaluated on held-out pairs
    assert load_config(_dpo(seed_mapping)).preference_loss() == ("sigmoid", 0.1)  # trl's defaults
    assert load_config(_dpo(seed_mapping, dpo_beta=0.3)).preference_loss() == ("sigmoid", 0.3)
    assert load_config(_dpo(seed_mapping, rl_beta=0.2, dpo_loss_type="ipo")).preference_loss() == ("ipo", 0.2)
    assert load_config(_dpo(seed_mapping, rl="ipo")).preference_loss() == ("ipo", 0.1)
    chat = {
        "path": "p.jsonl",
        "type": "chat_template.default",
        "field_messages": "conversation",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles": {"user": ["user"], "assistant": ["assistant"]},
    }
    assert _paths(_dpo(seed_mapping, datasets=[chat])) == []
    assert load_config(seed_mapping).preference_loss() is None


@pytest.mark.parametrize(
    "keys,path",
    [
        ({"sample_packing": True}, "sample_packing"),
        ({"min_sample_len": 4}, "min_sample_len"),
        ({"train_on_inputs": True}, "train_on_inputs"),
        ({"fsdp": ["full_shard", "auto_wrap"]}, "fsdp"),
        ({"rl_beta": 0.1, "dpo_beta": 0.1}, "dpo_beta"),
        ({"rl": "ipo", "dpo_loss_type": "sigmoid"}, "dpo_loss_type"),
        ({"dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        (
            {"rl": "kto", "datasets": [{"path": "p.jsonl", "type": "chat_template.default"}]},
            "datasets[0].type",
        ),
        ({"rl": "dpo", "datasets": [{"path": "k.jsonl", "type": "llama3.ultra"}]}, "datasets[0].type"),
        ({"rl": "orpo", "simpo_gamma": 0.5}, "simpo_gamma"),
        ({"rl": "orpo", "orpo_alpha": 0.2, "rl_beta": 0.2}, "orpo_alpha"),
        ({"rl": "simpo", "kto_desirable_weight": 0.5}, "kto_desirable_weight"),
        ({"rl": "orpo", "precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
        ({"rl": "simpo", "dpo_loss_type": "ipo"}, "dpo_loss_type"),
        ({"rl": "grpo"}, "rl"),
        ({"datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, "datasets[0].type"),
    ],
)
def test_what_preference_training_does_not_run_is_refused(seed_mapping, keys, path):
    problems = validate_mapping(_dpo(seed_mapping, **keys))
    assert path in [problem.path for problem in problems], problems
    assert all(problem.fix for problem in problems)


def test_pairs_and_dpo_keys_need_rl(seed_mapping):
    mapping = {**seed_mapping, "datasets": [PAIRS], "rl_beta": 0.2}
    assert set(_paths(mapping)) == {"datasets[0].type", "rl_beta"}
    assert _paths({**seed_mapping, "dpo_label_smoothing": 0.0}) == []  # Axolotl's "off" value


KTO = {"path": "kto.jsonl", "type": "chatml.intel"}


def test_orpo_simpo_kto_keys_are_read_as_trl_settings(seed_mapping):
    orpo = _dpo(
        seed_mapping,
        rl="orpo",
        orpo_alpha=0.2,
        datasets=[{"path": "p.jsonl", "type": "chat_template.argilla"}],
    )
    assert _paths(orpo) == []
    objective = load_config(orpo).preference_objective()
    assert (objective.loss_type, objective.beta, objective.needs_reference) == ("orpo", 0.2, False)
    assert load_config(_dpo(seed_mapping, rl="orpo")).preference_objective().beta == 0.1  # ORPOConfig's

    simpo = _dpo(seed_mapping, rl="simpo", rl_beta=2.0, simpo_gamma=0.8, cpo_alpha=0.0)
    assert _paths(simpo) == []
    objective = load_config(simpo).preference_objective()
    assert (objective.loss_type, objective.beta, objective.simpo_gamma, objective.cpo_alpha) == (
        "simpo",
        2.0,
        0.8,
        0.0,
    )
    defaults = load_config(_dpo(seed_mapping, rl="simpo")).preference_objective()
    assert (defaults.simpo_gamma, defaults.cpo_alpha) == (0.5, 1.0)  # CPOConfig's

    kto = _dpo(
        seed_mapping, rl="kto", rl_beta=0.5, kto_desirable_weight=0.2, datasets=[KTO], micro_batch_size=2
    )
    assert _paths(kto) == []
    objective = load_config(kto).preference_objective()
    assert (objective.beta, objective.desirable_weight, objective.undesirable_weight) == (0.5, 0.2, 1.0)
    assert not objective.paired and objective.needs_reference
    for llama3 in ("llama3.ultra", "llama3.argilla", "chatml.ultra", "chatml.argilla_chat"):
        assert _paths({**kto, "datasets": [{"path": "k.jsonl", "type": llama3}]}) == []
    assert _paths({**kto, "micro_batch_size": 1}) == ["micro_batch_size"]  # trl's KL term needs others


def test_full_fine_tune_and_precomputed_reference_are_accepted(seed_mapping):
    full = _dpo(seed_mapping, adapter=None, lora_r=None, lora_alpha=None, lora_target_modules=None)
    assert _paths(full) == []  # the reference is a frozen copy
    assert _paths({**full, "precompute_ref_log_probs": True}) == []
    assert load_config({**full, "precompute_ref_log_probs": True}).precompute_ref_log_probs is True
    assert _paths({**seed_mapping, "precompute_ref_log_probs": True}) == ["precompute_ref_log_probs"]


def _full(seed_mapping, **keys) -> dict:
    keys = {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_modules": None} | keys
    return _dpo(seed_mapping, **keys)


def test_trl_block_beta_and_reference_sync_are_read_as_trl_settings(seed_mapping):
    mapping = _dpo(seed_mapping, trl={"beta": 0.3})
    assert _paths(mapping) == []
    assert load_config(mapping).preference_objective().beta == 0.3
    orpo = _dpo(seed_mapping, rl="orpo", trl={"beta": 0.25})
    assert load_config(orpo).preference_objective().beta == 0.25  # Axolotl passes it to every rl type
    assert load_config(_dpo(seed_mapping)).preference_objective().ref_sync is None

    synced = _full(seed_mapping, trl={"sync_ref_model": True})
    assert _paths(synced) == []
    assert load_config(synced).preference_objective().ref_sync == (0.9, 64)  # Axolotl's defaults
    tuned = _full(
        seed_mapping, trl={"sync_ref_model": True, "ref_model_mixup_alpha": 0.5, "ref_model_sync_steps": 8}
    )
    assert load_config(tuned).preference_objective().ref_sync == (0.5, 8)
    kto = _full(seed_mapping, rl="kto", datasets=[KTO], micro_batch_size=2, trl={"sync_ref_model": True})
    assert _paths(kto) == []
    # A config dumped by Axolotl holds its trl defaults, and the off values of the GRPO keys.
    dumped = {
        "use_vllm": False,
        "vllm_server_host": "0.0.0.0",
        "vllm_server_port": 8000,
        "scale_rewards": True,
        "log_completions": False,
        "reward_num_workers": 1,
        "replay_buffer_size": 0,
        "reroll_start_fraction": 1.0,
        "skip_zero_advantage_batches": True,
        "reward_funcs": None,
        "temperature": None,
    }
    assert _paths(_dpo(seed_mapping, trl=dumped)) == []
    dumped |= {"sync_ref_model": False, "ref_model_mixup_alpha": 0.9, "ref_model_sync_steps": 64}
    assert _paths(_dpo(seed_mapping, trl=dumped)) == []  # the sync off, with Axolotl's defaults
    assert _paths({**seed_mapping, "trl": dumped}) == []  # nothing set: SFT runs as without the block
    assert load_config(_dpo(seed_mapping, trl=dumped)).preference_objective().ref_sync is None


@pytest.mark.parametrize(
    "keys,paths",
    [
        ({"trl": {"use_vllm": True}}, ["trl.use_vllm"]),
        (
            {"trl": {"reward_funcs": ["rewards.accuracy"], "num_generations": 8}},
            ["trl.reward_funcs", "trl.num_generations"],
        ),
        ({"trl": {"temperature": 0.7}}, ["trl.temperature"]),
        ({"trl": {"vllm_server_port": 8001}}, ["trl.vllm_server_port"]),
        ({"trl": {"loss_type": "dr_grpo"}}, ["trl.loss_type"]),
        ({"trl": {"max_completion_length": 256}}, ["trl.max_completion_length"]),
        ({"trl": {"label_smoothing": 0.1}}, ["trl.label_smoothing"]),  # not an Axolotl trl key
        ({"trl": {"beta": 0.2}, "rl_beta": 0.2}, ["trl.beta"]),
        ({"trl": {"beta": 0.2}, "dpo_beta": 0.3}, ["trl.beta"]),
        ({"rl": "orpo", "trl": {"beta": 0.2}, "orpo_alpha": 0.2}, ["trl.beta"]),
        ({"trl": {"sync_ref_model": True}}, ["trl.sync_ref_model"]),  # LoRA: the reference is the base
        ({"trl": {"ref_model_sync_steps": 8}}, ["trl.ref_model_sync_steps"]),
        ({"trl": {"sync_ref_model": False, "ref_model_mixup_alpha": 0.5}}, ["trl.ref_model_mixup_alpha"]),
        ({"trl": {"ref_model_mixup_alpha": 1.5}}, ["trl.ref_model_mixup_alpha"]),
    ],
)
def test_what_the_trl_block_does_not_run_is_refused(seed_mapping, keys, paths):
    problems = validate_mapping(_dpo(seed_mapping, **keys))
    assert sorted(problem.path for problem in problems) == sorted(paths), problems
    assert all(problem.fix for problem in problems)


def test_trl_reference_sync_needs_a_full_fine_tune_with_a_live_reference(seed_mapping):
    sync = {"sync_ref_model": True}
    assert _paths(_full(seed_mapping, rl="simpo", trl=sync)) == ["trl.sync_ref_model"]  # no reference
    precomputed = _full(seed_mapping, trl=sync, precompute_ref_log_probs=True)
    assert _paths(precomputed) == ["trl.sync_ref_model"]
    problems = validate_mapping({**seed_mapping, "trl": {"beta": 0.2}})  # SFT reads no trl setting
    assert [(p.path, "rl is not set" in p.message) for p in problems] == [("trl.beta", True)]
    conflict = validate_mapping(_dpo(seed_mapping, trl={"beta": 0.2}, rl_beta=0.3))
    assert "rl_beta" in conflict[0].message and "trl.beta" in conflict[0].fix  # both key paths named


def test_dpo_use_weighting_is_read_for_dpo_and_ipo_only(seed_mapping):
    assert load_config(_dpo(seed_mapping, dpo_use_weighting=True)).preference_objective().use_weighting
    assert (
        load_config(_dpo(seed_mapping, rl="ipo", dpo_use_weighting=True)).preference_objective().use_weighting
    )
    assert not load_config(_dpo(seed_mapping)).preference_objective().use_weighting
    assert _paths(_dpo(seed_mapping, rl="orpo", dpo_use_weighting=True)) == ["dpo_use_weighting"]
    assert _paths({**seed_mapping, "dpo_use_weighting": True}) == ["dpo_use_weighting"]
    assert _paths({**seed_mapping, "dpo_use_weighting": False}) == []  # off, as Axolotl configs write it


def test_dpo_label_smoothing_is_read_by_the_robust_and_exo_pair_losses(seed_mapping):
    robust = _dpo(seed_mapping, dpo_loss_type="robust", dpo_label_smoothing=0.2)
    assert _paths(robust) == []
    objective = load_config(robust).preference_objective()
    assert (objective.loss_type, objective.label_smoothing) == ("robust", 0.2)
    assert _paths(_dpo(seed_mapping, dpo_loss_type="robust")) == []  # 0: the plain sigmoid's value
    assert _paths(_dpo(seed_mapping, dpo_loss_type="exo_pair", dpo_label_smoothing=0.001)) == []
    assert _paths(_dpo(seed_mapping, dpo_loss_type="exo_pair")) == ["dpo_label_smoothing"]  # trl: log(0)
    assert _paths(_dpo(seed_mapping, dpo_label_smoothing=0.1)) == ["dpo_label_smoothing"]  # sigmoid
    assert _paths(_dpo(seed_mapping, rl="ipo", dpo_label_smoothing=0.1)) == ["dpo_label_smoothing"]
    assert _paths(_dpo(seed_mapping, dpo_loss_type="robust", dpo_label_smoothing=0.5)) == [
        "dpo_label_smoothing"
    ]


def test_dpo_loss_type_as_axolotl_writes_it_a_list_with_weights(seed_mapping):
    one = load_config(_dpo(seed_mapping, dpo_loss_type=["ipo"])).preference_objective()
    assert (one.loss_type, one.dpo_losses) == ("ipo", (("ipo", 1.0),))
    rpo = _dpo(seed_mapping, dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1.0, 0.5])
    assert _paths(rpo) == []
    assert load_config(rpo).preference_objective().dpo_losses == (("sigmoid", 1.0), ("sft", 0.5))
    unweighted = load_config(_dpo(seed_mapping, dpo_loss_type=["sigmoid", "sft"])).preference_objective()
    assert unweighted.dpo_losses == (("sigmoid", 1.0), ("sft", 1.0))  # trl's default: 1 each
    assert _paths(_dpo(seed_mapping, dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1.0])) == [
        "dpo_loss_weights"
    ]
    assert _paths(_dpo(seed_mapping, dpo_loss_type=["sigmoid", "sigmoid"])) == ["dpo_loss_type"]
    assert _paths(_dpo(seed_mapping, dpo_loss_type=[])) == ["dpo_loss_type"]
    hinge = _paths(_dpo(seed_mapping, dpo_loss_type=["hinge"]))  # a trl loss type kubetune does not run
    assert hinge and all(path.startswith("dpo_loss_type") for path in hinge)
    assert _paths(_dpo(seed_mapping, rl="ipo", dpo_loss_type=["ipo"])) == []
    assert _paths(_dpo(seed_mapping, rl="ipo", dpo_loss_type=["ipo", "sft"])) == ["dpo_loss_type"]
    assert _paths(_dpo(seed_mapping, rl="orpo", dpo_loss_weights=[1.0])) == ["dpo_loss_weights"]
    smoothed = _dpo(seed_mapping, dpo_loss_type=["robust", "sft"], dpo_label_smoothing=0.1)
    assert _paths(smoothed) == []
    weighted = _dpo(seed_mapping, dpo_loss_type=["sigmoid", "sft"], dpo_use_weighting=True)
    assert _paths(weighted) == ["dpo_use_weighting"]  # trl fails on it
    problems = validate_mapping({**_dpo(seed_mapping), "rpo_alpha": 0.5})
    assert [p.path for p in problems] == ["rpo_alpha"] and "[sigmoid, sft]" in problems[0].fix


def test_trl_names_of_axolotl_dpo_keys_point_to_the_top_level_key(seed_mapping):
    for key in ("label_smoothing", "use_weighting", "loss_weights"):
        [problem] = validate_mapping(_dpo(seed_mapping, trl={key: 0.1}))
        assert problem.path == f"trl.{key}" and f"dpo_{key}" in problem.fix
