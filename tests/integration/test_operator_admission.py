"""Bad FineTuneJobs: refused at `kubectl apply` by the webhook, or Failed by the operator without it.

Both paths run the same validation, so the key path and the message a user reads are the same.
"""

from __future__ import annotations

import json

import pytest
from kubetune_operator.k8s import Kube
from kubetune_operator.spec import report, validate_job

from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cases import BAD_SPECS, bad_job, job
from tests.unit.operator.cluster_support import (
    REPO,
    WEBHOOK_LABEL,
    OperatorProcess,
    free_port,
    install_crd,
    register_webhook,
    write_certificates,
)

pytestmark = pytest.mark.integration

PREFIX = "ktop-adm"
WEBHOOK_NAME = "kubetune-operator-test"
CASES = [case for case, _, _ in BAD_SPECS]
PATHS = {case: path for case, _, path in BAD_SPECS}


@pytest.fixture(scope="module")
def operator(kube_cluster, tmp_path_factory):
    install_crd(kube_cluster)
    workdir = tmp_path_factory.mktemp("operator-webhook")
    ca = write_certificates(workdir / "certs")
    port = free_port()
    process = OperatorProcess(kube_cluster, workdir / "operator.log", namespaces=[f"{PREFIX}-*"],
                              webhook_dir=workdir / "certs", webhook_port=port).start()  # fmt: skip
    register_webhook(kube_cluster, WEBHOOK_NAME, port, ca)
    yield process
    kube_cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_NAME, check=False)
    process.stop()
    print(f"operator log: {workdir / 'operator.log'}")


@pytest.fixture(scope="module")
def guarded_ns(kube_cluster, operator):
    """A namespace the webhook covers."""
    name = kube_cluster.create_namespace(prefix=PREFIX)
    kube_cluster.kubectl("label", "namespace", name, f"{WEBHOOK_LABEL}=on")
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def open_ns(kube_cluster, operator):
    """A namespace the webhook does not cover: as if it were switched off."""
    name = kube_cluster.create_namespace(prefix=PREFIX)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster, body, check=True):
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(body), check=check)


def test_there_are_at_least_ten_bad_jobs():
    assert len(CASES) >= 10


def test_the_webhook_admits_a_good_job(kube_cluster, guarded_ns):
    body = job("good", guarded_ns, image=TEST_IMAGE, suspend=True)
    assert "created" in apply(kube_cluster, body).stdout


@pytest.mark.parametrize("case", CASES)
def test_the_webhook_refuses_each_bad_job_with_its_key_path(kube_cluster, guarded_ns, case):
    body = bad_job(case, namespace=guarded_ns)
    refused = apply(kube_cluster, body, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "denied the request" in refused.stderr and PATHS[case] in refused.stderr, refused.stderr
    # The refusal carries the validation's own report (message and fix for each problem).
    for line in report(validate_job(body).problems).splitlines()[1:]:
        assert line.strip() in refused.stderr
    missing = kube_cluster.kubectl("get", "ftj", body["metadata"]["name"], "-n", guarded_ns, check=False)
    assert missing.returncode != 0


def test_without_the_webhook_each_bad_job_fails_with_the_same_message_and_no_children(kube_cluster, open_ns):
    kube = Kube(kube_cluster.api_client())
    bodies = [bad_job(case, namespace=open_ns) for case in CASES]
    for body in bodies:
        apply(kube_cluster, body)  # the CRD's schema and CEL rules let these through
    for case, body in zip(CASES, bodies, strict=True):
        name = body["metadata"]["name"]
        failed = wait_for(
            lambda n=name: (
                (j := kube.get("FineTuneJob", open_ns, n)) and j.get("status", {}).get("phase") and j
            ),
            60,
            what=f"status of {name}",
        )
        status = failed["status"]
        assert status["phase"] == "Failed" and status["reason"] == "InvalidConfig", (case, status)
        assert status["message"] == report(validate_job(body).problems)[:1024]
        assert PATHS[case] in status["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Failed"]["status"] == "True" and "Created" not in conditions
    for kind in ("ConfigMap", "Service", "StatefulSet", "ServiceAccount", "Role", "RoleBinding", "Pod"):
        made = kube.list(kind, open_ns, {"app.kubernetes.io/managed-by": "kubetune"})
        assert made == [], f"{kind}: {[o['metadata']['name'] for o in made]}"


def test_the_crd_schema_and_cel_catch_what_they_can_without_the_webhook(kube_cluster, open_ns):
    too_many = job("a" * 53, open_ns)
    both = job("both", open_ns, configMapRef={"name": "cfg"})
    zero = job("zero", open_ns, workers=0)
    for body, words in [
        (too_many, "at most 52 characters"),
        (both, "set exactly one of spec.config"),
        (zero, "spec.workers"),
    ]:
        refused = apply(kube_cluster, body, check=False)
        assert refused.returncode != 0 and words in refused.stderr, refused.stderr


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("finetunejob-*.yaml")), ids=lambda p: p.name)
def test_the_examples_pass_the_crd_and_the_webhook(kube_cluster, guarded_ns, path):
    done = kube_cluster.kubectl("apply", "--dry-run=server", "-n", guarded_ns, "-f", str(path))
    assert "finetunejob.kubetune.dev" in done.stdout and "(server dry run)" in done.stdout
