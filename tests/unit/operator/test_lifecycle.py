"""lifecycle.py: the order of the policies, the phase-change event, the status patch."""

import pkgutil

from kubetune_operator import lifecycle, policies
from kubetune_operator.lifecycle import POLICIES, status_patch

from tests.unit.operator.lifecycle_support import Job, pod


def test_status_patch_removes_dropped_keys():
    old = {"phase": "Running", "startTime": "x", "progress": {"step": 3}}
    assert status_patch(old, {"phase": "Suspended", "progress": {"step": 3}}) == {
        "phase": "Suspended",
        "startTime": None,
    }
    assert status_patch(old, {"phase": "Running", "startTime": "x", "progress": {"step": 3}}) is None


def test_the_policies_run_in_the_order_the_behaviour_depends_on():
    names = [policy.__name__ for policy in POLICIES]
    assert names == [
        "keep_finished",  # a finished job stays finished whatever its pods do
        "carry_reports",  # before completion, which reads rank 0's report
        "fail_invalid",  # before anything needs the spec
        "suspend",
        "wait_for_config",
        "activate",  # startTime before the deadline reads it
        "complete",  # a finished training ignores the deadline and the other workers' exits
        "enforce_deadline",
        "handle_failure",
        "report_workers",
    ]


def test_every_policy_module_is_applied():
    helpers = {"draft", "outcomes"}
    modules = {m.name for m in pkgutil.iter_modules(policies.__path__)} - helpers
    applied = {policy.__module__.rsplit(".", 1)[1] for policy in POLICIES}
    assert applied == modules


def test_a_phase_change_no_policy_announced_gets_an_event(monkeypatch):
    def quiet_running(draft):
        draft.phase("Running", "Quiet", "no event of its own")
        return True

    monkeypatch.setattr(lifecycle, "POLICIES", (quiet_running,))
    j = Job()
    decision = j.step([pod(0), pod(1)])
    assert [(e.type, e.reason, e.message) for e in decision.events] == [
        ("Normal", "Running", "no event of its own")
    ]
    assert j.step([pod(0), pod(1)]).events == []  # the phase did not change: no event
