"""carry_reports (policies/reports.py): the pods' reports copied into the status."""

from kubetune_operator.lifecycle import status_patch
from kubetune_operator.policies.reports import carry_reports

from tests.unit.operator.lifecycle_support import Job, draft, pod


def test_progress_reports_are_copied_into_the_status():
    # Rank 0 writes its ConfigMap; the operator copies the report: one status write per report.
    j = Job()
    j.step([pod(0), pod(1)])
    plan = j.step([pod(0), pod(1)], progress={"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5})
    assert status_patch(j.status, plan.status) is None and plan.events == []
    assert "progressPercent" not in j.status
    assert j.status["progress"] == {"step": 30, "totalSteps": 120, "percent": "25%", "loss": 1.5}


def test_carry_reports_keeps_only_the_contract_fields_and_never_settles():
    d = draft(progress={"step": 3, "totalSteps": 12, "injected": "x", "completed": "yes"})
    assert not carry_reports(d)
    assert d.new["progress"] == {"step": 3, "totalSteps": 12, "percent": "25%"}
    # No report read this time: the one in the status stays; none at all: no key.
    kept = draft(status={"progress": {"step": 5}})
    assert not carry_reports(kept)
    assert kept.new["progress"] == {"step": 5}
    empty = draft()
    carry_reports(empty)
    assert "progress" not in empty.new and "fetch" not in empty.new and "tracking" not in empty.new


def test_carry_reports_announces_new_tracker_runs_once():
    runs = [{"kind": "tensorboard", "logDir": "/outputs/demo/runs/a"}]
    d = draft(tracking=runs)
    carry_reports(d)
    assert d.new["tracking"] == runs and [e.reason for e in d.decision.events] == ["TrackerRuns"]
    again = draft(tracking=runs, status={"tracking": runs})
    carry_reports(again)
    assert again.new["tracking"] == runs and again.decision.events == []
