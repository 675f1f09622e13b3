"""Arbitrary YAML-ish mappings only ever produce a clean report (a list of ConfigProblem), never a traceback."""

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubetune.config import ConfigError, ConfigProblem, compat, load_config, validate_mapping
from kubetune.config.datasets import DatasetConfig
from kubetune.config.loading import parse_yaml
from kubetune.config.parallel import FsdpConfig
from kubetune.config.schema import TrainConfig

TOP_KEYS = sorted(TrainConfig.model_fields) + sorted(compat.TOP_LEVEL)[:60] + ["fsdp_version"]
NESTED_KEYS = (
    sorted(DatasetConfig.model_fields)
    + sorted(FsdpConfig.model_fields)
    + sorted(compat.DATASET)
    + ["sharding_strategy", "offload_params", "version"]
)
ALL_KEYS = TOP_KEYS + NESTED_KEYS
# Values that hit the interesting branches: enum members, type names, empties, odd numbers.
WORDS = [
    "alpaca",
    "chat_template",
    "completion",
    "input_output",
    "pretokenized",
    "my_mod.Fmt",
    "a.b.c",
    "sharegpt",
    "lora",
    "qlora",
    "auto",
    "full_shard",
    "auto_wrap",
    "offload",
    "nf4",
    "bfloat16",
    "cosine",
    "jinja",
    "chatml",
    "FULL_STATE_DICT",
    "turn",
    "assistant",
    "2e-4",
    "1e400",
    "nan",
    "-1",
    "0",
    "0.5",
    "",
    " ",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
keys = st.sampled_from(ALL_KEYS) | st.text(max_size=10) | st.integers(-3, 3) | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
top_level = st.dictionaries(st.sampled_from(TOP_KEYS) | keys, values, max_size=12)


def _assert_clean(problems):
    assert isinstance(problems, list)
    for problem in problems:
        assert isinstance(problem, ConfigProblem)
        assert (
            isinstance(problem.path, str)
            and isinstance(problem.message, str)
            and isinstance(problem.fix, str)
        )
        assert problem.message
        assert not problem.message.startswith("internal error"), problem
        str(problem)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_level)
def test_arbitrary_mappings_give_a_clean_report(mapping):
    _assert_clean(validate_mapping(mapping))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_seed_config_with_random_replacements_gives_a_clean_report(seed_mapping, data):
    mapping = copy.deepcopy(seed_mapping)
    for key in data.draw(st.lists(st.sampled_from(TOP_KEYS), max_size=6)):
        mapping[key] = data.draw(values)
    datasets = mapping.get("datasets")
    first = datasets[0] if isinstance(datasets, list) and datasets else None
    entry = dict(first) if isinstance(first, dict) else {}
    if data.draw(st.booleans()):
        for key in data.draw(st.lists(st.sampled_from(NESTED_KEYS), max_size=4)):
            entry[key] = data.draw(values)
        mapping["datasets"] = [entry]
    _assert_clean(validate_mapping(mapping))


@settings(max_examples=150, deadline=None)
@given(
    st.text(max_size=200) | st.sampled_from(["a: [", "a: {b: 1, b: 2}", "- 1\n- 2", "&x [*x]", ":\n:", "\t"])
)
def test_arbitrary_yaml_text_gives_a_clean_report(text):
    document, problems = parse_yaml(text)
    _assert_clean(problems)
    try:
        load_config(document if isinstance(document, dict) else {"document": document})
    except ConfigError as error:
        _assert_clean(error.problems)


@settings(max_examples=80, deadline=None)
@given(top_level)
def test_generated_mapping_survives_a_yaml_round_trip(mapping):
    try:
        text = yaml.safe_dump(mapping)
    except yaml.YAMLError:
        return
    document, problems = parse_yaml(text)
    _assert_clean(problems)
    if isinstance(document, dict):
        _assert_clean(validate_mapping(document))
