"""wait_for_config (policies/config_wait.py): children that cannot be built yet."""

import pytest
from kubetune_operator.lifecycle import Observed, decide
from kubetune_operator.spec import validate_job

from tests.unit.operator.cases import job
from tests.unit.operator.lifecycle_support import NOW


def test_waiting_for_a_config_map():
    body = job(configMapRef={"name": "cfg"})
    del body["spec"]["config"]
    body["metadata"].update(uid="u", generation=1)
    validation = validate_job(body)
    plan = decide(Observed(job=body, spec=validation.spec, pods=[], now=NOW,
                           waiting=("ConfigMapNotFound", "waiting for ConfigMap 'cfg'")))  # fmt: skip
    assert not plan.apply_children and plan.requeue_after == pytest.approx(10)
    assert plan.status["phase"] == "Pending" and plan.status["reason"] == "ConfigMapNotFound"
