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


DOCS = sorted((Path(__file__).resolve().parents[3] / "docs").glob("*.md"))


def documented_jobs() -> list[tuple[str, dict]]:
    """(where, FineTuneJob) for every complete FineTuneJob in a ```yaml block of docs/*.md."""
    import re

    jobs = []
    for path in DOCS:
        for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)):
            if "kind: FineTuneJob" in block:
                for doc in yaml.safe_load_all(block):
                    if doc and doc.get("kind") == "FineTuneJob":
                        jobs.append((f"{path.name}#{index}", doc))
    return jobs


def test_the_docs_show_complete_jobs():
    assert any(where.startswith("kubernetes.md") for where, _ in documented_jobs())


@pytest.mark.parametrize(
    ("where", "job"), documented_jobs(), ids=lambda value: value if isinstance(value, str) else ""
)
def test_each_job_in_the_docs_validates(where, job):
    validation = validate_job(job)
    assert validation.ok, f"{where}: {report(validation.problems)}"
