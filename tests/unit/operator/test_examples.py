"""The FineTuneJob examples are valid, and say what they claim."""

from pathlib import Path

import pytest
import yaml
from kubetune_operator.spec import load_referenced_config, report, validate_job

from tests.unit.operator.cases import SEED_CONFIG

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("finetunejob-*.yaml"))


def documents(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"finetunejob-lora.yaml", "finetunejob-configmap.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_validates(path):
    docs = documents(path)
    jobs = [d for d in docs if d["kind"] == "FineTuneJob"]
    assert jobs
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for job in jobs:
        validation = validate_job(job)
        assert validation.ok, report(validation.problems)
        ref = validation.spec.configMapRef
        if ref is not None:
            config, problems = load_referenced_config(maps[ref.name]["data"][ref.key], ref.name)
            assert config is not None, report(problems)


def test_the_lora_example_carries_the_reference_config():
    (job,) = documents(Path(EXAMPLES[0]).with_name("finetunejob-lora.yaml"))
    assert job["spec"]["config"] == {**SEED_CONFIG, "num_epochs": 3}
