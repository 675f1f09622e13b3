"""The Helm chart: lint, rendered manifests for the main value combinations, the values schema.

Rendering uses the pinned helm (`helm template`, no cluster); the e2e tier installs the chart
for real (tests/e2e/test_helm_install.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from tests.unit.packaging.helm import CHART, REPO, by_kind, one, run, set_args, template

NS = "kubetune-system"
FULLNAME = "kubetune"


def _deployment(docs):
    return one(docs, "Deployment", FULLNAME)


def _container(docs):
    (container,) = _deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


def _env(container) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _covers(rules, group: str, resource: str, verb: str, name: str | None = None) -> bool:
    for rule in rules:
        if group not in rule.get("apiGroups", []) or resource not in rule.get("resources", []):
            continue
        if verb not in rule.get("verbs", []):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


# --- lint ------------------------------------------------------------------------------------------

VALUE_COMBINATIONS = {
    "default": {},
    "namespaced": {"scope.mode": "namespaced", "scope.namespaces": ["team-a", "team-b"]},
    "ha": {"ha.enabled": True},
    "ha-namespaced": {"ha.enabled": True, "scope.mode": "namespaced"},
    "cert-manager": {"webhook.certManager.enabled": True},
    "no-webhook": {"webhook.enabled": False},
    "crds-off": {"crds.enabled": False},
    "service-monitor": {"metrics.serviceMonitor.enabled": True},
}


LINTED = ("default", "namespaced", "ha", "cert-manager")  # the others are rendered by the tests below


@pytest.mark.parametrize("values", [VALUE_COMBINATIONS[k] for k in LINTED], ids=LINTED)
def test_helm_lint_strict(helm, values):
    p = run(helm, "lint", "--strict", str(CHART), "--namespace", NS, *set_args(values), check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 chart(s) failed" in p.stdout


# --- default ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_docs(helm):
    return template(helm)


def test_default_objects(default_docs):
    kinds = {k: len(v) for k, v in by_kind(default_docs).items()}
    assert kinds == {
        "CustomResourceDefinition": 3,  # FineTuneJob and kopf's two peering CRDs (HA: the webhook is on)
        "ClusterKopfPeering": 1,
        "PodDisruptionBudget": 1,
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Deployment": 1,
        "Secret": 1,
        "Service": 2,
        "ValidatingWebhookConfiguration": 1,
    }
    for doc in default_docs:
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                               "ValidatingWebhookConfiguration", "ClusterKopfPeering"):  # fmt: skip
            assert doc["metadata"]["namespace"] == NS, doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "kubetune"


def test_default_deployment_with_the_webhook_stays_available_through_a_restart(default_docs):
    # With failurePolicy Fail a lone replica being replaced refuses every create: HA is on by default
    # whenever the webhook is, every replica serves it, and a rollout never takes the last one away.
    spec = _deployment(default_docs)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pdb = one(default_docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    args = _container(default_docs)["args"]
    assert "--peering=kubetune" in args and "--webhook-cert-dir=/etc/kubetune/webhook" in args
    webhook = by_kind(default_docs)["ValidatingWebhookConfiguration"][0]["webhooks"][0]
    assert webhook["failurePolicy"] == "Fail"


def test_explicitly_single_replica_is_recreate(helm):
    docs = template(helm, {"ha.enabled": False})
    spec = _deployment(docs)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = _container(docs)
    # The operator image's console script (images/operator/Containerfile installs the project's wheel).
    assert container["command"] == ["kubetune-operator"]
    args = container["args"]
    assert "--all-namespaces" in args and "--standalone" in args
    assert "--webhook-cert-dir=/etc/kubetune/webhook" in args and "--webhook-port=9443" in args
    assert "--metrics-port=8080" in args and "--health-port=8081" in args
    assert not any(a.startswith(("--peering", "--namespace")) for a in args)
    assert "--no-allow-host-path" in args and "--allow-service-accounts" in args
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready only once the webhook server listens (the Service then has an endpoint to call).
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": 9443, "metrics": 8080, "health": 8081}
    env = _env(container)
    assert (
        env["KUBETUNE_RUNTIME_IMAGE"] == "ghcr.io/kubetune/runtime:0.1.0"
    )  # one image for CPU and GPU nodes
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "KUBETUNE_RUNTIME_RESOURCES" not in env
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["webhook-tls"] == "/etc/kubetune/webhook"


def test_operator_cli_accepts_the_rendered_arguments(default_docs, helm):
    """Every flag the chart passes exists in `kubetune-operator` (the two are written apart)."""
    from kubetune_operator.main import build_parser

    parser = build_parser()
    for values in VALUE_COMBINATIONS.values():
        args = _container(template(helm, values))["args"]
        parser.parse_args(args)  # exits (SystemExit) on an unknown or malformed flag


def test_webhook_path_is_the_operators_handler(default_docs):
    from kubetune_operator.webhook import WEBHOOK_ID

    vwc = one(default_docs, "ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "kubetune-webhook", "namespace": NS, "path": f"/{WEBHOOK_ID}", "port": 443,
    }  # fmt: skip
    assert hook["rules"] == [{
        "apiGroups": ["kubetune.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
        "resources": ["finetunejobs"], "scope": "Namespaced",
    }]  # fmt: skip
    assert hook["sideEffects"] == "None" and hook["failurePolicy"] == "Fail"
    assert "namespaceSelector" not in hook
    service = one(default_docs, "Service", "kubetune-webhook")
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]


def test_self_signed_certificate_serves_the_webhook_service(default_docs):
    from cryptography import x509

    secret = one(default_docs, "Secret", "kubetune-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)  # raises when the CA did not sign it
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"kubetune-webhook.{NS}.svc" in sans.get_values_for_type(x509.DNSName)
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")
    (hook,) = one(default_docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


def test_metrics_service(default_docs):
    service = one(default_docs, "Service", "kubetune-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == _deployment(default_docs)["spec"]["selector"]["matchLabels"]


# --- RBAC ------------------------------------------------------------------------------------------


def _operator_rules(docs, kind: str) -> list[dict]:
    return [rule for role in docs if role["kind"] == kind for rule in role["rules"]]


def _sample_children():
    from kubetune_operator import builders
    from kubetune_operator.spec import FineTuneJobSpec

    job = builders.JobRef(name="demo", namespace="team-a", uid="0000")
    spec = FineTuneJobSpec.model_validate(
        {
            "workers": 2,
            "storage": {"claimTemplate": {"size": "1Gi"}},
            "cache": {"claimTemplate": {"size": "1Gi"}},
        }
    )
    config = {"base_model": "/models/tiny", "datasets": [{"path": "/data/train.jsonl", "type": "alpaca"}]}
    return builders.children(job, spec, config, 2, builders.BuildOptions())


RESOURCES = {  # kind -> (API group, resource)
    "ConfigMap": ("", "configmaps"), "Service": ("", "services"), "ServiceAccount": ("", "serviceaccounts"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"), "StatefulSet": ("apps", "statefulsets"),
    "Role": ("rbac.authorization.k8s.io", "roles"), "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
}  # fmt: skip


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_rbac_covers_what_the_operator_does_and_grants(helm, mode):
    docs = template(helm, {"scope.mode": mode})
    rules = _operator_rules(docs, "ClusterRole" if mode == "cluster" else "Role")
    children = _sample_children()
    # Every child is written with server-side apply (PATCH; create when it does not exist yet).
    for child in children:
        group, resource = RESOURCES[child["kind"]]
        for verb in ("create", "patch"):
            assert _covers(rules, group, resource, verb), (child["kind"], verb)
    # The per-job progress Role: Kubernetes refuses to let the operator grant what it lacks.
    progress = [c for c in children if c["kind"] == "Role"]
    assert progress
    for role in progress:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            assert _covers(rules, group, resource, verb, name), (resource, verb)
    for verb in ("get", "list", "watch", "delete"):
        assert _covers(rules, "kubetune.dev", "finetunejobs", verb)
    assert _covers(rules, "kubetune.dev", "finetunejobs/status", "patch")
    for verb in ("list", "watch", "delete"):
        assert _covers(rules, "", "pods", verb)
    for verb in ("list", "watch"):
        assert _covers(rules, "apps", "statefulsets", verb)
    assert _covers(rules, "", "events", "create")


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_rbac_is_least_privilege(helm, mode):
    docs = template(helm, {"scope.mode": mode, "ha.enabled": True})
    for role in docs:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate", "update", "deletecollection"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]
            assert "finetunejobs" not in rule["resources"] or "patch" not in rule["verbs"], (
                "spec is never written"
            )


def test_namespaced_scope(helm):
    docs = template(helm, {"scope.mode": "namespaced", "scope.namespaces": ["team-a", "team-b"]})
    kinds = by_kind(docs)
    # Nothing cluster-scoped for the operator: it makes no cluster-scoped call (see the next test).
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    for binding in kinds["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]
    args = _container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    (hook,) = one(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


@pytest.mark.parametrize("values", [VALUE_COMBINATIONS["namespaced"], VALUE_COMBINATIONS["ha-namespaced"]])
def test_namespaced_operator_needs_no_cluster_reads(helm, values):
    """The chart's namespaced RBAC has no cluster rights, so the operator must not scan the cluster:
    kopf lists namespaces and CRDs at start unless every --namespace is an exact name."""
    from kubetune_operator.main import build_parser, settings_for

    args = build_parser().parse_args(_container(template(helm, values))["args"])
    assert args.namespace and settings_for(args).scanning.disabled


def test_namespaced_scope_with_cluster_read(helm):
    docs = template(helm, {"scope.mode": "namespaced", "scope.clusterRead": True})
    (read,) = by_kind(docs)["ClusterRole"]
    assert read["metadata"]["name"] == "kubetune-read"
    for rule in read["rules"]:
        assert rule["verbs"] == ["get", "list", "watch"]
    assert sorted(r for rule in read["rules"] for r in rule["resources"]) == [
        "customresourcedefinitions",
        "namespaces",
    ]
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == "kubetune-read"


def test_namespaced_scope_defaults_to_the_release_namespace(helm):
    docs = template(helm, {"scope.mode": "namespaced"})
    assert [r["metadata"]["namespace"] for r in by_kind(docs)["Role"]] == [NS]
    assert f"--namespace={NS}" in _container(docs)["args"]


# --- HA --------------------------------------------------------------------------------------------


def test_ha(helm):
    docs = template(helm, {"ha.enabled": True})
    spec = _deployment(docs)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    args = _container(docs)["args"]
    assert "--peering=kubetune" in args and "--standalone" not in args
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    crds = {c["metadata"]["name"] for c in by_kind(docs)["CustomResourceDefinition"]}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    peering = one(docs, "ClusterKopfPeering", "kubetune")
    assert "namespace" not in peering["metadata"]
    rules = _operator_rules(docs, "ClusterRole")
    assert _covers(rules, "kopf.dev", "clusterkopfpeerings", "patch", "kubetune")
    assert _covers(rules, "kopf.dev", "clusterkopfpeerings", "watch")
    assert not _covers(rules, "kopf.dev", "clusterkopfpeerings", "patch", "someone-else")


def test_ha_namespaced_peers_in_each_namespace(helm):
    docs = template(helm, {"ha.enabled": True, "scope.mode": "namespaced", "scope.namespaces": ["a", "b"]})
    peerings = by_kind(docs)["KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["a", "b"]
    assert "ClusterKopfPeering" not in by_kind(docs)
    for role in by_kind(docs)["Role"]:
        assert _covers(role["rules"], "kopf.dev", "kopfpeerings", "patch", "kubetune")


def test_ha_without_peering_crds(helm):
    docs = template(helm, {"ha.enabled": True, "peering.installCRDs": False})
    crds = {c["metadata"]["name"] for c in by_kind(docs)["CustomResourceDefinition"]}
    assert crds == {"finetunejobs.kubetune.dev"}


def test_single_replica_has_no_pdb_nor_peering(helm):
    for values in ({"ha.enabled": False}, {"webhook.enabled": False}):
        kinds = by_kind(template(helm, values))
        assert "PodDisruptionBudget" not in kinds and "ClusterKopfPeering" not in kinds
        assert _deployment(template(helm, values))["spec"]["replicas"] == 1


# --- certificates ----------------------------------------------------------------------------------


def test_cert_manager(helm):
    docs = template(helm, {"webhook.certManager.enabled": True})
    kinds = by_kind(docs)
    assert "Secret" not in kinds
    issuer = one(docs, "Issuer", "kubetune-selfsigned")
    assert issuer["spec"] == {"selfSigned": {}}
    cert = one(docs, "Certificate", "kubetune-webhook")
    assert cert["spec"]["secretName"] == "kubetune-webhook-tls"
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "kubetune-selfsigned"}
    assert f"kubetune-webhook.{NS}.svc" in cert["spec"]["dnsNames"]
    vwc = one(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NS}/kubetune-webhook"
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]


def test_cert_manager_with_an_existing_issuer(helm):
    docs = template(
        helm,
        {
            "webhook.certManager.enabled": True,
            "webhook.certManager.issuerRef": {"kind": "ClusterIssuer", "name": "ca"},
        },
    )
    assert "Issuer" not in by_kind(docs)
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "ca"}


def test_webhook_disabled(helm):
    docs = template(helm, {"webhook.enabled": False})
    kinds = by_kind(docs)
    assert "ValidatingWebhookConfiguration" not in kinds and "Secret" not in kinds
    assert [s["metadata"]["name"] for s in kinds["Service"]] == ["kubetune-metrics"]
    container = _container(docs)
    assert not any(a.startswith("--webhook") for a in container["args"])
    assert "webhook-tls" not in {m["name"] for m in container.get("volumeMounts", [])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_writable_tmp_only_with_a_read_only_root(helm, default_docs):
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(default_docs)["volumeMounts"]
    docs = template(helm, {"securityContext.readOnlyRootFilesystem": False, "webhook.enabled": False})
    assert "volumeMounts" not in _container(docs)
    assert "volumes" not in _deployment(docs)["spec"]["template"]["spec"]


# --- CRDs ------------------------------------------------------------------------------------------


def test_crd_is_the_generated_one_with_keep(default_docs):
    crd = one(default_docs, "CustomResourceDefinition", "finetunejobs.kubetune.dev")
    source = yaml.safe_load((REPO / "crds" / "finetunejob.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


def test_chart_copy_of_the_crd_is_verbatim():
    copy = CHART / "files" / "crds" / "finetunejob.yaml"
    assert copy.read_text() == (REPO / "crds" / "finetunejob.yaml").read_text(), (
        "stale chart copy: run python scripts/generate.py"
    )


def test_crds_keep_off(helm):
    docs = template(helm, {"crds.keep": False})
    crd = one(docs, "CustomResourceDefinition", "finetunejobs.kubetune.dev")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_disabled(helm):
    docs = template(helm, {"crds.enabled": False})
    # kopf's peering CRDs (HA is on with the webhook) follow peering.installCRDs, not crds.enabled.
    crds = {c["metadata"]["name"] for c in by_kind(docs)["CustomResourceDefinition"]}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    docs = template(helm, {"crds.enabled": False, "peering.installCRDs": False})
    assert "CustomResourceDefinition" not in by_kind(docs)


# --- metrics ---------------------------------------------------------------------------------------


def test_service_monitor(helm, default_docs):
    assert "ServiceMonitor" not in by_kind(default_docs)
    docs = template(
        helm, {"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"release": "prom"}}
    )
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service", "kubetune-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    webhook_service = one(docs, "Service", "kubetune-webhook")
    assert not selector.items() <= webhook_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_service_monitor_needs_the_service(helm):
    p = run(helm, "template", "kubetune", str(CHART),
            *set_args({"metrics.serviceMonitor.enabled": True, "metrics.service.enabled": False}), check=False)  # fmt: skip
    assert p.returncode != 0 and "needs metrics.service.enabled" in p.stderr


# --- training defaults -----------------------------------------------------------------------------


def test_training_defaults_reach_the_operator(helm):
    from kubetune_operator.builders import parse_resources
    from kubetune_operator.main import build_parser

    resources = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}
    docs = template(helm, {"training.image.tag": "0.2.0-rc1", "training.resources": resources})
    env = _env(_container(docs))
    assert env["KUBETUNE_RUNTIME_IMAGE"] == "ghcr.io/kubetune/runtime:0.2.0-rc1"
    assert json.loads(env["KUBETUNE_RUNTIME_RESOURCES"]) == resources
    # The operator reads it (as the default of --runtime-resources) and accepts it.
    assert "KUBETUNE_RUNTIME_RESOURCES" in build_parser().format_help()
    assert parse_resources(env["KUBETUNE_RUNTIME_RESOURCES"]).model_dump() == resources
    docs = template(helm, {"training.image.repository": "registry.local/rt", "training.image.tag": "v9"})
    assert _env(_container(docs))["KUBETUNE_RUNTIME_IMAGE"] == "registry.local/rt:v9"


def test_image_digest(helm):
    docs = template(helm, {"image.digest": "sha256:" + "a" * 64})
    assert _container(docs)["image"] == "ghcr.io/kubetune/operator:0.1.0@sha256:" + "a" * 64


# --- values schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"unknownTopLevel": 1},
        {"webhook.unknown": True},
        {"webhook.certManager.unknown": "x"},
        {"crds.keepIt": True},
        {"metrics.serviceMonitor.intervall": "30s"},
        {"training.image.unknown": "x"},
        {"training.image.variant": "cpu"},  # gone: one runtime image serves CPU and GPU nodes
        {"securityContext.runAsUserr": 1000},
        {"scope.mode": "everywhere"},
        {"ha.replicas": 1},
        {"webhook.failurePolicy": "Sometimes"},
        {"crds.enabled": "yes"},
        {"training.resources": {"limits": {"nvidia.com/gpu": 1}}},  # the operator would refuse to start
        {"training.resources": {"requests": {"memory": "64GB"}}},
        {"training.resources": {"claims": [{"name": "dra"}]}},  # the operator's defaults have no claims
    ],
    ids=lambda v: next(iter(v)),
)
def test_schema_rejects_bad_values(helm, values):
    p = run(helm, "template", "kubetune", str(CHART), *set_args(values), check=False)
    assert p.returncode != 0, f"accepted {values}"
    assert "schema" in p.stderr.lower() or "values don't meet" in p.stderr.lower(), p.stderr


def _object_nodes(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from _object_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _object_nodes(value, f"{path}[{i}]")


def test_schema_closes_every_chart_level():
    """Every object of the chart's own is closed (additionalProperties false) or a typed map; the
    only open ones are Kubernetes objects passed through to the API server, which validates them."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_nodes = []
    for path, node in _object_nodes(schema):
        extra = node.get("additionalProperties")
        if extra is False or isinstance(extra, dict):
            continue
        if "(a Kubernetes object" in node.get("description", ""):
            continue
        open_nodes.append(path)
    assert open_nodes == []
    assert schema["additionalProperties"] is False


# Kubernetes objects given as defaults: their inner keys are Kubernetes' own, documented there.
K8S_VALUE_BLOCKS = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "annotations",
    "affinity",
    "issuerRef",
}


def test_every_default_value_is_in_the_schema():
    """values.yaml and values.schema.json describe the same keys."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value, node, path, kubernetes=False):
        assert node is not None, f"{path} is in values.yaml but not in values.schema.json"
        kubernetes = kubernetes or path.rsplit(".", 1)[-1] in K8S_VALUE_BLOCKS
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, sub in value.items():
                walk(sub, node["properties"].get(key), f"{path}.{key}", kubernetes)
            if not kubernetes:  # Kubernetes' optional fields may stay unset
                missing = set(node["properties"]) - set(value)
                assert not missing, f"{path}: schema keys without a default in values.yaml: {sorted(missing)}"

    walk(values, schema, "$")


def test_values_yaml_documents_every_key():
    """cert-manager style: a comment above every key, or above the group of keys it belongs to."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    prev = ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#") or not stripped or stripped.startswith("-") or ":" not in stripped:
            prev = line
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_k8s_value = any(k in K8S_VALUE_BLOCKS for _, k in stack)
        prev_indent = len(prev) - len(prev.lstrip())
        documented = (
            stripped.endswith(":")  # a block: its keys carry the comments
            or prev.strip().startswith("#")
            or (prev.strip() and not prev.strip().startswith("-") and prev_indent <= indent)
        )
        if not documented and not inside_k8s_value:
            undocumented.append(f"{number}: {stripped}")
        stack.append((indent, key))
        prev = line
    assert undocumented == []


def test_chart_files_exist():
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md", "argocd-health.lua",
                 "templates/NOTES.txt", ".helmignore"):  # fmt: skip
        assert (CHART / name).is_file(), name
    assert Path(CHART / "templates" / "crds" / "finetunejob.yaml").is_file()
