"""The fetch step of jobs that read remote sources: the init container the builders add, the Fetching
phase and status.fetch from its reports, and a failed fetch ending the job at once, naming the source."""

from __future__ import annotations

import json

from kubetune_operator import progress as progress_report
from kubetune_operator.builders import BuildOptions
from kubetune_operator.fetchstep import OFFLINE_ENV

from tests.unit.operator.cases import seed_config
from tests.unit.operator.lifecycle_support import Job, fetching_pod, pod
from tests.unit.operator.test_builders import build, container

LOCAL = {
    **seed_config(),
    "base_model": "/models/llama",
    "datasets": [{"path": "/data/train.jsonl", "type": "alpaca"}],
}


def pod_spec(children):
    return children["StatefulSet"]["spec"]["template"]["spec"]


def env_of(c):
    return {e["name"]: e.get("value") for e in c["env"]}


def test_hub_sources_get_a_fetch_step_sharing_the_cache_and_offline_trainers():
    children, _ = build(
        cache={"existingClaim": "hf-cache"},
        gpusPerWorker=8,
        resources={"requests": {"cpu": "16", "memory": "200Gi"}},
        envFrom=[{"secretRef": {"name": "hf-token"}}],
        env=[{"name": "HF_ENDPOINT", "value": "https://hub.internal"}],
    )
    spec = pod_spec(children)
    [fetch] = spec["initContainers"]
    trainer = container(children)
    assert fetch["name"] == "fetch" and fetch["command"] == ["kubetune", "fetch", "/etc/kubetune/config.yaml"]
    assert fetch["image"] == trainer["image"] and fetch["volumeMounts"] == trainer["volumeMounts"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "hf-token"}}]  # the token Secret reaches the fetch
    assert fetch["securityContext"] == trainer["securityContext"]
    assert fetch["resources"] == {"requests": {"cpu": "16", "memory": "200Gi"}}  # no GPU to download
    fetch_env, trainer_env = env_of(fetch), env_of(trainer)
    for env in (fetch_env, trainer_env):
        assert (
            env["HF_HOME"] == "/var/cache/kubetune/huggingface"
            and env["HF_ENDPOINT"] == "https://hub.internal"
        )
        assert env["KUBETUNE_PROGRESS_CONFIGMAP"] == "demo-progress"
    assert all(trainer_env[name] == "1" for name in OFFLINE_ENV)
    assert not set(OFFLINE_ENV) & set(fetch_env)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}  # one cache for all pods


def test_without_a_cache_volume_each_pod_gets_its_own():
    spec = pod_spec(build()[0])
    assert spec["initContainers"][0]["name"] == "fetch"
    assert {v["name"]: v for v in spec["volumes"]}["cache"] == {"name": "cache", "emptyDir": {}}


def test_local_sources_need_no_fetch_step():
    children, _ = build(config=LOCAL)
    spec = pod_spec(children)
    assert "initContainers" not in spec and "cache" not in {v["name"] for v in spec["volumes"]}
    assert not set(OFFLINE_ENV) & set(env_of(container(children)))


def test_a_read_only_cache_was_filled_beforehand():
    children, _ = build(cache={"existingClaim": "hf-cache", "readOnly": True})
    assert "initContainers" not in pod_spec(children)
    assert "HF_HUB_OFFLINE" not in env_of(container(children))


def test_the_user_may_keep_the_trainers_online():
    children, _ = build(env=[{"name": "HF_HUB_OFFLINE", "value": "0"}])
    assert env_of(container(children))["HF_HUB_OFFLINE"] == "0"
    assert env_of(pod_spec(children)["initContainers"][0])["HF_HUB_OFFLINE"] == "0"


def test_the_fetch_command_comes_from_the_operator():
    options = BuildOptions.from_env({"KUBETUNE_OPERATOR_FETCH": "/venv/bin/python -m kubetune fetch"})
    assert options.fetcher == ("/venv/bin/python", "-m", "kubetune", "fetch")
    fetch = pod_spec(build(options=options)[0])["initContainers"][0]
    assert fetch["command"] == ["/venv/bin/python", "-m", "kubetune", "fetch", "/etc/kubetune/config.yaml"]


# --- status ---------------------------------------------------------------------------------------


REPORT = {"sources": 2, "source": 1, "current": "base_model 'acme/tiny' at revision v1", "filesDone": 3,
          "filesTotal": 7, "bytesDone": 1_234_567, "bytesTotal": 5_000_000_000, "done": False}  # fmt: skip


def test_fetching_phase_with_bytes_done():
    j = Job()
    j.step()
    j.step(pods=[fetching_pod(0), fetching_pod(1)])
    assert j.status["phase"] == "Fetching" and "fetch step running in demo-0" in j.status["message"]
    plan = j.step(pods=[fetching_pod(0), fetching_pod(1)], fetch=progress_report.sanitize_fetch(REPORT))
    status = j.status
    assert status["phase"] == "Fetching" and status["reason"] == "FetchingSources"
    assert status["fetch"]["fetched"] == "1.2MB/5.0GB" and status["fetch"]["bytesDone"] == 1_234_567
    assert "base_model 'acme/tiny' at revision v1" in status["message"] and "3/7 files" in status["message"]
    assert j.condition("Running")["status"] == "False" and plan.events == []  # one event, on entering
    # then the trainers run: Running, and status.fetch stays as the record of what was fetched
    done = {**REPORT, "source": 2, "bytesDone": 5_000_000_000, "done": True}
    plan = j.step(pods=[pod(0), pod(1)], fetch=progress_report.sanitize_fetch(done))
    assert j.status["phase"] == "Running" and j.status["fetch"]["done"] is True
    assert j.status["fetch"]["fetched"] == "5.0GB/5.0GB"


MISSING = json.dumps({"status": "bad_input", "exit_code": 2,
                      "reason": "fetch: base_model 'acme/nope': repository not found on https://hub.internal"})  # fmt: skip


def test_a_fetch_that_cannot_succeed_fails_the_job_at_once_naming_the_source():
    j = Job()
    j.step()
    crashed = fetching_pod(0, state={"waiting": {"reason": "CrashLoopBackOff"}},
                           last={"exitCode": 2, "message": MISSING})  # fmt: skip
    plan = j.step(pods=[crashed, fetching_pod(1)])
    assert j.status["phase"] == "Failed" and j.status["reason"] == "FetchFailed"
    assert "worker demo-0 fetch step exited with code 2" in j.status["message"]
    assert "base_model 'acme/nope': repository not found" in j.status["message"]
    assert plan.scale_to_zero and not plan.delete_pods and j.status.get("restarts", 0) == 0


def test_a_transient_fetch_failure_restarts_the_group_and_counts():
    j = Job()
    j.step()
    crashed = fetching_pod(0, state={"waiting": {"reason": "CrashLoopBackOff"}},
                           last={"exitCode": 1, "message": '{"status": "failed", "exit_code": 1, "reason": "fetch: ConnectError"}'})  # fmt: skip
    plan = j.step(pods=[crashed, fetching_pod(1)])
    assert j.status["reason"] == "Restarting" and j.status["restarts"] == 1
    assert "fetch step exited with code 1: fetch: ConnectError" in j.status["message"]
    assert plan.delete_pods == ["demo-0", "demo-1"]


def test_fetch_reports_are_sanitized():
    clean = progress_report.sanitize_fetch(
        {
            **REPORT,
            "bytesDone": "lots",
            "filesDone": True,
            "phase": "Succeeded",
            "current": "datasets[0].path 's3://key:secret@bucket/train.jsonl?X-Amz-Signature=abc'",
            "error": "x" * 5000,
        }  # fmt: skip
    )
    assert "bytesDone" not in clean and "filesDone" not in clean and "phase" not in clean
    assert clean["current"] == "datasets[0].path 's3://bucket/train.jsonl'"
    assert len(clean["error"]) == progress_report.TEXT_LIMIT and "fetched" not in clean
    assert progress_report.sanitize_fetch("not a report") == {}
    assert (
        progress_report.read_fetch({"data": {"fetch.json": json.dumps(REPORT)}})["fetched"] == "1.2MB/5.0GB"
    )
    assert progress_report.read_fetch({"data": {"fetch.json": "{"}}) is None
