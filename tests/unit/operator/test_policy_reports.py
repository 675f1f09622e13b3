"""carry_reports (policies/reports.py): the pods' reports copied into the status."""

from kubetune_operator.lifecycle import status_patch

from tests.unit.operator.lifecycle_support import Job, pod


def test_progress_reports_are_copied_into_the_status():
    # Rank 0 writes its ConfigMap; the operator copies the report: one status write per report.
    j = Job()
    j.step([pod(0), pod(1)])
    plan = j.step([pod(0), pod(1)], progress={"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5})
    assert status_patch(j.status, plan.status) is None and plan.events == []
    assert "progressPercent" not in j.status
    assert j.status["progress"] == {"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5}
