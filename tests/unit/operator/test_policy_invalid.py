"""fail_invalid (policies/invalid.py): an invalid spec or config fails at once."""

from kubetune.config import ConfigProblem
from kubetune_operator.policies.invalid import fail_invalid

from tests.unit.operator.cases import bad_job
from tests.unit.operator.lifecycle_support import Job, draft


def test_invalid_config_fails_with_the_validation_report_and_builds_nothing():
    j = Job()
    j.body = bad_job("misspelt-key", name="demo")
    j.body["metadata"].update(uid="u-1", generation=1)
    plan = j.step()
    assert not plan.apply_children and not plan.scale_to_zero and plan.delete_pods == []
    assert j.status["phase"] == "Failed" and j.status["reason"] == "InvalidConfig"
    assert "spec.config.lerning_rate" in j.status["message"] and "learning_rate" in j.status["message"]
    assert j.condition("Failed")["message"] == j.status["message"]
    assert [e.type for e in plan.events] == ["Warning"]
    assert "Created" not in [c["type"] for c in j.status["conditions"]]


def test_fail_invalid_lets_a_valid_job_through_and_fails_an_invalid_one_without_scaling():
    assert not fail_invalid(draft())
    problem = ConfigProblem(path="spec.config.lr", message="unknown key", fix="use learning_rate")
    d = draft(problems=[problem], problem_reason="InvalidSpec")
    assert fail_invalid(d)
    assert (
        d.new["phase"] == "Failed"
        and d.new["reason"] == "InvalidSpec"
        and "spec.config.lr" in d.new["message"]
    )
    assert not d.decision.scale_to_zero  # nothing was created: nothing to scale
