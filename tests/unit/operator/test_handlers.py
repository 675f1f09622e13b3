from kubetune_operator.builders import BuildOptions
from kubetune_operator.handlers import OperatorState
from kubetune_operator.reconcile import Reconciler

from tests.unit.operator.fake_kube import FakeKube


class Queue:
    def __init__(self):
        self.added = []

    def add(self, key):
        self.added.append(key)

    def forget(self, key):
        self.added.append(("forget", key))


def body(generation=1, progress=None, phase=None, deleting=False):
    meta = {"uid": "u", "generation": generation, "name": "demo", "namespace": "default"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"phase": phase} if phase else {}
    if progress is not None:
        status["progress"] = progress
    return {"metadata": meta, "status": status}


def test_only_changes_that_can_change_a_decision_wake_a_reconcile():
    state = OperatorState(reconciler=Reconciler(FakeKube(), BuildOptions()))
    state.queue = Queue()
    key = ("default", "demo")
    state.job_changed(key, body())
    state.job_changed(key, body(phase="Pending"))  # the operator's own status write
    state.job_changed(key, body(phase="Running"))
    assert state.queue.added == [key]
    # The operator's own copy of rank 0's progress (rank 0 reports through its ConfigMap).
    state.job_changed(key, body(phase="Running", progress={"step": 1}))
    assert state.queue.added == [key]
    state.job_changed(key, body(generation=2, phase="Running", progress={"step": 1}))  # spec edited
    state.job_changed(key, body(generation=2, progress={"step": 1}, deleting=True))
    assert state.queue.added == [key] * 3
    state.gone(key)
    assert key not in state.seen and state.queue.added[-1] == ("forget", key)
    state.job_changed(key, body())  # the same name again (or the initial listing after a restart)
    assert state.queue.added[-1] == key
