"""The operator with only the chart's namespaced rights: no cluster-scoped call, no refused call.

The operator runs as the ServiceAccount the chart creates in `scope.mode=namespaced`, bound to the
Role the chart renders (helm template), through a token kubeconfig: what a namespaced install in a
shared cluster gets. With exact --namespace names kopf's cluster scanning is off, so startup needs
no Namespace or CRD reads and the first job is reconciled at once (kopf used to retry those
refused lists for about a minute). The chart's training.resources reach the worker pods.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml
from kubetune_operator.k8s import Kube

from tests.kube_cluster import TEST_IMAGE, wait_for
from tests.unit.operator.cases import job
from tests.unit.operator.cluster_support import OperatorProcess, install_crd
from tests.unit.packaging.helm import by_kind, find_helm, template

pytestmark = pytest.mark.integration

PREFIX = "ktop-nsd"
RELEASE = "ktop"
SA = f"{RELEASE}-kubetune"
TRAINING = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
# What kopf or the operator logs when the API server refuses a call.
REFUSALS = ("Forbidden", " 403", "Not enough permissions", "is forbidden")


def token_kubeconfig(cluster, namespace: str, account: str, path) -> str:
    """A kubeconfig that authenticates as `namespace/account` with a bound token (1 h)."""
    admin = yaml.safe_load(open(cluster.kubeconfig))
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    if "certificate-authority" in server:  # inline it: the operator process may run elsewhere
        server = {"server": server["server"], "certificate-authority-data": base64.b64encode(
            open(server["certificate-authority"], "rb").read()).decode()}  # fmt: skip
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_charts_namespaced_rights_suffice(kube_cluster, tmp_path):
    helm = find_helm()
    if helm is None:
        pytest.skip("no helm binary (e2e/cluster/build.sh builds it with the local cluster)")
    install_crd(kube_cluster)
    ns = kube_cluster.create_namespace(prefix=PREFIX)
    docs = template(helm, {"scope.mode": "namespaced", "webhook.enabled": False, "crds.enabled": False,
                           "training.resources": TRAINING}, release=RELEASE, namespace=ns)  # fmt: skip
    kinds = by_kind(docs)
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds), "namespaced mode grants cluster rights"
    rbac = kinds["ServiceAccount"] + kinds["Role"] + kinds["RoleBinding"]
    assert {d["metadata"]["namespace"] for d in rbac} == {ns}
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    who = f"system:serviceaccount:{ns}:{SA}"
    for cluster_read in (("list", "namespaces"), ("list", "customresourcedefinitions.apiextensions.k8s.io")):
        assert (
            kube_cluster.kubectl("auth", "can-i", *cluster_read, "--as", who, check=False).stdout.strip()
            == "no"
        )
    (operator,) = by_kind(docs)["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in operator["env"] if "value" in e}

    log = tmp_path / "operator.log"
    process = OperatorProcess(
        kube_cluster, log, namespaces=[ns], kubeconfig=token_kubeconfig(kube_cluster, ns, SA, tmp_path / "kc"),
        extra_env={"KUBETUNE_RUNTIME_RESOURCES": env["KUBETUNE_RUNTIME_RESOURCES"]},
    )  # fmt: skip
    kube = Kube(kube_cluster.api_client())
    try:
        started = time.monotonic()
        process.start()
        body = job("scoped", ns, workers=1, image=TEST_IMAGE)
        body["spec"]["env"] = [
            {"name": "FAKE_MODE", "value": "succeed"},
            {"name": "FAKE_STEPS", "value": "2"},
        ]
        body["spec"]["terminationGracePeriodSeconds"] = 2
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        done = wait_for(lambda: (j := kube.get("FineTuneJob", ns, "scoped")) and
                        j.get("status", {}).get("phase") in ("Succeeded", "Failed") and j, 120,
                        what="the job to finish under the namespaced operator")  # fmt: skip
        seconds = time.monotonic() - started
        assert done["status"]["phase"] == "Succeeded", (done["status"], process.log_tail())
        # Well under kopf's ~54 s of retried cluster lists.
        assert seconds < 45, f"start to Succeeded took {seconds:.0f} s:\n{process.log_tail()}"
        (sts,) = kube.list("StatefulSet", ns, {"kubetune.dev/job-name": "scoped"})
        (trainer,) = sts["spec"]["template"]["spec"]["containers"]
        assert trainer["resources"] == TRAINING, trainer.get("resources")
        time.sleep(2)  # a late refusal (a watch that could not start) would show by now
    finally:
        process.stop()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    text = log.read_text(errors="replace")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    refused = [line for line in text.splitlines() if any(r in line for r in REFUSALS)]
    assert not refused, "refused calls:\n" + "\n".join(refused[:20])
    problems = [(line["severity"], line.get("message")) for line in lines
                if line.get("severity") in ("warning", "error", "critical")]  # fmt: skip
    assert not problems, problems
    startup = next(line for line in lines if line.get("message", "").startswith("kubetune-operator watching"))
    assert startup["namespace_scanning"] is False and startup["runtime_resources"] == TRAINING
    print(f"namespaced operator: start to Succeeded in {seconds:.1f} s; {len(lines)} log lines, none refused")
