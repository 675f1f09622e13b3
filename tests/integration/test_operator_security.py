"""The operator's workers in a namespace that enforces the restricted Pod Security Standard.

The API server's PodSecurity admission judges the pod spec; the kubelet runs it as the image's
non-root user. A pod the StatefulSet controller cannot create reaches the job's status as FailedCreate.
"""

from __future__ import annotations

import json

import pytest

from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cases import job

pytestmark = pytest.mark.integration

PREFIX = "ktop-pss"  # the namespaces of this module's operator and jobs (conftest.py)


@pytest.fixture
def restricted_ns(kube_cluster):
    name = kube_cluster.create_namespace(prefix=PREFIX)
    kube_cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def fake_job(name, namespace, **spec):
    body = job(name, namespace, workers=1, image=TEST_IMAGE, **spec)
    body["spec"]["env"] = [{"name": "FAKE_MODE", "value": "run"}]
    body["spec"]["terminationGracePeriodSeconds"] = 2
    return body


def apply(cluster, body):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def test_workers_run_in_a_namespace_enforcing_restricted(kube_cluster, operator, restricted_ns, kube):
    apply(kube_cluster, fake_job("strict", restricted_ns))
    running = wait_for(lambda: (j := kube.get("FineTuneJob", restricted_ns, "strict"))
                       and j.get("status", {}).get("phase") == "Running" and j, 90, what="Running")  # fmt: skip
    assert running["status"]["workers"] == "1/1"
    (pod,) = kube.list("Pod", restricted_ns, {"kubetune.dev/job-name": "strict"})
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    if kube_cluster.local:  # the local node's runtime reports the identity its process runs as
        user = wait_for(lambda: kube.get("Pod", restricted_ns, pod["metadata"]["name"])["status"]
                        ["containerStatuses"][0]["user"]["linux"], 30, what="the container's user")  # fmt: skip
        context = pod["spec"]["securityContext"]
        assert (
            user["uid"] == context["runAsUser"] != 0 and context["fsGroup"] in user["supplementalGroups"]
        ), user


def test_a_pod_the_namespace_refuses_shows_failed_create(kube_cluster, operator, restricted_ns, kube):
    # An nfs volume is not in the restricted standard's list: PodSecurity admission refuses the pod.
    nfs = [{"name": "scratch", "nfs": {"server": "nfs.invalid", "path": "/x"}}]
    apply(kube_cluster, fake_job("refused", restricted_ns, volumes=nfs))
    found = wait_for(lambda: (j := kube.get("FineTuneJob", restricted_ns, "refused"))
                     and j.get("status", {}).get("reason") == "FailedCreate" and j, 60, what="FailedCreate")  # fmt: skip
    assert "violates PodSecurity" in found["status"]["message"] and found["status"]["phase"] == "Pending"
    table = kube_cluster.kubectl("get", "ftj", "-n", restricted_ns, "refused").stdout
    assert "FailedCreate" in table, table
