"""fail_invalid (policies/invalid.py): an invalid spec or config fails at once."""

from tests.unit.operator.cases import bad_job
from tests.unit.operator.lifecycle_support import Job


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
