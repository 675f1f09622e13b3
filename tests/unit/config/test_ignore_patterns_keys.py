"""base_model_ignore_patterns: carried by base_model's hub source to the fetch; refused where nothing is
downloaded from the hub (the fetch itself: tests/unit/sources/test_fetch.py)."""

from __future__ import annotations

import pytest
from kubetune.config import ConfigError, load_config
from kubetune.config.sources import remote_sources

PATTERNS = ["*.pth", "original/*"]


def config(seed_mapping, **keys):
    return load_config(seed_mapping | {"base_model_ignore_patterns": PATTERNS} | keys)


def test_the_patterns_go_with_base_models_hub_source_only(seed_mapping):
    cfg = config(seed_mapping, base_model="org/model", tokenizer_config="org/tokenizer")
    sources = {source.key: source for source in remote_sources(cfg)}
    assert sources["base_model"].ignore_patterns == tuple(PATTERNS)
    assert sources["tokenizer_config"].ignore_patterns == ()
    assert all(s.ignore_patterns == () for k, s in sources.items() if k.startswith("datasets"))
    # Without the key nothing is left out.
    assert remote_sources(load_config(seed_mapping | {"base_model": "org/model"}))[0].ignore_patterns == ()


@pytest.mark.parametrize(
    ("base_model", "named"),
    [("./models/llama", "a local directory"), ("s3://bucket/models/llama", "an object-store prefix (s3://)")],
)
def test_refused_when_base_model_is_not_a_hub_repository(seed_mapping, base_model, named):
    with pytest.raises(ConfigError) as error:
        config(seed_mapping, base_model=base_model)
    (problem,) = [p for p in error.value.problems if p.path == "base_model_ignore_patterns"]
    assert named in problem.message and "nothing is downloaded from the hub" in problem.message
    assert "remove base_model_ignore_patterns" in problem.fix


def test_refused_for_an_existing_directory_named_like_a_hub_id(seed_mapping, tmp_path):
    (tmp_path / "org" / "model").mkdir(parents=True)
    path = tmp_path / "config.yml"
    import yaml

    path.write_text(
        yaml.safe_dump(seed_mapping | {"base_model": "org/model", "base_model_ignore_patterns": PATTERNS})
    )
    with pytest.raises(ConfigError, match="base_model is a local directory"):
        load_config(path)


def test_an_empty_pattern_is_refused_and_an_empty_list_is_no_patterns(seed_mapping):
    with pytest.raises(ConfigError, match="an empty pattern matches no file"):
        config(seed_mapping, base_model="org/model", base_model_ignore_patterns=["*.pth", " "])
    assert load_config(seed_mapping | {"base_model": "org/model", "base_model_ignore_patterns": []})


def test_one_pattern_may_be_a_string_as_in_older_axolotl_configs(seed_mapping):
    cfg = config(seed_mapping, base_model="org/model", base_model_ignore_patterns="pytorch*")
    assert cfg.base_model_ignore_patterns == ["pytorch*"]
    assert remote_sources(cfg)[0].ignore_patterns == ("pytorch*",)
    # The operator holds the job's config as a mapping: one string there is one pattern too.
    raw = {"base_model": "org/model", "base_model_ignore_patterns": "pytorch*"}
    assert remote_sources(raw, check_local=False)[0].ignore_patterns == ("pytorch*",)
