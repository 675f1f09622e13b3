"""The fetch step through the real control plane and node: the operator's init container runs
first, its reports become the Fetching phase and the Fetched column, and a source that cannot be
fetched fails the job at once with reason FetchFailed, naming it.

The pods run the fake trainer's fetch mode (tests/unit/operator/fake_trainer.py: the reports and the
termination message `kubetune fetch` writes), so these tests exercise the operator's side; the real
download is tests/unit/sources (a real hub server) and tests/e2e/test_hub_fetch.py (both together).
"""

from __future__ import annotations

import pytest

from tests.integration.test_operator_lifecycle import apply, events, fake_job, live_pods, phase_is
from tests.kube_cluster import wait_for

pytestmark = pytest.mark.integration

PREFIX = "ktop-fetch"  # the namespaces of this module's operator and jobs (conftest.py)


def test_fetching_shows_bytes_then_the_trainers_run(kube_cluster, operator, ns, kube):
    # the seed config names hub ids: the pods get the fetch step; 4 files of 1 MB, one a second
    env = [{"name": "FAKE_FETCH_FILES", "value": "4"}, {"name": "FAKE_INTERVAL", "value": "1"}]
    apply(kube_cluster, fake_job("hub", ns, env=env))
    fetching = wait_for(lambda: phase_is(kube, ns, "hub", "Fetching"), 60, interval=0.3, what="Fetching")
    assert fetching["status"]["reason"] == "FetchingSources"
    pod = kube.get("Pod", ns, "hub-0")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fetch"]

    def row_with_bytes():
        out = kube_cluster.kubectl("-n", ns, "get", "ftj", "hub").stdout
        return out if "Fetching" in out and "MB/4.0MB" in out else None

    print(wait_for(row_with_bytes, 60, interval=0.3, what="the Fetched column during the fetch"))
    running = wait_for(lambda: phase_is(kube, ns, "hub", "Running"), 90, what="Running")
    assert (
        running["status"]["fetch"]["fetched"] == "4.0MB/4.0MB" and running["status"]["fetch"]["done"] is True
    )
    # The Running event is recorded after the status says Running: wait for it rather than race it.
    reasons = wait_for(
        lambda: (found := [reason for _, reason in events(kube, ns, "hub")]) and "Running" in found and found,
        30,
        what="the Running event",
    )
    assert reasons.index("Fetching") < reasons.index("Running"), reasons


def test_a_missing_source_fails_the_job_at_once(kube_cluster, operator, ns, kube):
    apply(kube_cluster, fake_job("nope", ns, env=[{"name": "FAKE_FETCH", "value": "missing"}]))
    failed = wait_for(lambda: phase_is(kube, ns, "nope", "Failed"), 90, what="Failed")
    status = failed["status"]
    assert status["reason"] == "FetchFailed" and status.get("restarts", 0) == 0
    assert "fetch step exited with code 2" in status["message"]
    assert "base_model 'meta-llama/Meta-Llama-3-8B': repository not found" in status["message"]
    assert "repository not found" in status["fetch"]["error"]
    wait_for(lambda: not live_pods(kube, ns, "nope"), 60, what="the workers to go")
