"""wait_for_config (policies/config_wait.py): children that cannot be built yet."""

import pytest
from kubetune_operator.lifecycle import Observed, decide
from kubetune_operator.policies.config_wait import CONFIG_RETRY_SECONDS, wait_for_config
from kubetune_operator.spec import validate_job

from tests.unit.operator.cases import job
from tests.unit.operator.lifecycle_support import NOW, draft


def test_waiting_for_a_config_map():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    body["metadata"].update(uid="u", generation=1)
    validation = validate_job(body)
    plan = decide(Observed(job=body, spec=validation.spec, pods=[], now=NOW,
                           waiting=("ConfigMapNotFound", "waiting for ConfigMap 'cfg'")))  # fmt: skip
    assert not plan.apply_children and plan.requeue_after == pytest.approx(10)
    assert plan.status["phase"] == "Pending" and plan.status["reason"] == "ConfigMapNotFound"


def test_wait_for_config_settles_only_while_the_children_cannot_be_built():
    assert not wait_for_config(draft())
    d = draft(waiting=("SecretNotFound", "waiting for Secret 'token'"))
    assert wait_for_config(d)
    assert d.new["phase"] == "Pending" and d.new["message"] == "waiting for Secret 'token'"
    assert not d.decision.apply_children and d.decision.requeue_after == pytest.approx(CONFIG_RETRY_SECONDS)
