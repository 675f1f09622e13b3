"""The control plane itself: CRD schema validation, garbage collection, RBAC, /version."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_cluster import wait_for

pytestmark = pytest.mark.integration


def test_version_reports_the_built_release(kube_cluster):
    v = client.VersionApi(kube_cluster.api_client()).get_code()
    assert v.major == "1" and v.git_version.startswith("v1.")
    if kube_cluster.local:
        assert int(v.minor) >= 34


def test_crd_round_trip_and_schema_validation(kube_cluster, kube_namespace):
    api = kube_cluster.api_client()
    ext = client.ApiextensionsV1Api(api)
    co = client.CustomObjectsApi(api)
    group = f"t{uuid.uuid4().hex[:8]}.kubetune.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 8},
                                        "mode": {
                                            "type": "string",
                                            "enum": ["fast", "slow"],
                                            "default": "fast",
                                        },
                                    },
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:

        def established():
            c = ext.read_custom_resource_definition(f"widgets.{group}")
            return any(x.type == "Established" and x.status == "True" for x in c.status.conditions or [])

        wait_for(established, 30, what="CRD Established")
        body = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3, "unknownField": "pruned"},
        }
        wait_for(
            lambda: co.create_namespaced_custom_object(group, "v1", kube_namespace, "widgets", body),
            30,
            what="custom resource accepted",
        )
        got = co.get_namespaced_custom_object(group, "v1", kube_namespace, "widgets", "w1")
        # defaulting and pruning by the structural schema
        assert got["spec"] == {"size": 3, "mode": "fast"}
        co.patch_namespaced_custom_object_status(
            group, "v1", kube_namespace, "widgets", "w1", {"status": {"phase": "Ready"}}
        )
        got = co.get_namespaced_custom_object(group, "v1", kube_namespace, "widgets", "w1")
        assert got["status"] == {"phase": "Ready"} and got["spec"]["size"] == 3
        # kubectl sees it too
        out = kube_cluster.kubectl("get", f"widgets.{group}", "-n", kube_namespace, "-o", "json").stdout
        assert [i["metadata"]["name"] for i in json.loads(out)["items"]] == ["w1"]

        for bad, field in (
            ({"size": 0}, "spec.size"),
            ({"size": 2, "mode": "warp"}, "spec.mode"),
            ({"mode": "slow"}, "spec.size"),
            ({"size": "three"}, "spec.size"),
        ):
            bad_body = {**body, "metadata": {"name": "bad"}, "spec": bad}
            with pytest.raises(ApiException) as ei:
                co.create_namespaced_custom_object(group, "v1", kube_namespace, "widgets", bad_body)
            assert ei.value.status == 422, ei.value.body
            assert field in ei.value.body
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def test_deleting_an_owner_garbage_collects_its_children(kube_cluster, kube_namespace):
    core = client.CoreV1Api(kube_cluster.api_client())
    owner = core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        core.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}}
        )
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "bystander"}})
    core.delete_namespaced_config_map("owner", kube_namespace)

    def children_gone():
        names = {c.metadata.name for c in core.list_namespaced_config_map(kube_namespace).items}
        return not any(n.startswith("child-") for n in names) and "bystander" in names

    wait_for(children_gone, 60, what="children garbage-collected")


def test_rbac_is_enforced_for_service_accounts(kube_cluster, kube_namespace):
    p = kube_cluster.kubectl(
        "auth",
        "can-i",
        "list",
        "secrets",
        "-n",
        kube_namespace,
        f"--as=system:serviceaccount:{kube_namespace}:default",
        check=False,
    )
    assert p.stdout.strip() == "no"
    kube_cluster.kubectl(
        "create",
        "rolebinding",
        "view",
        "--clusterrole=view",
        f"--serviceaccount={kube_namespace}:default",
        "-n",
        kube_namespace,
    )
    p = kube_cluster.kubectl(
        "auth",
        "can-i",
        "list",
        "configmaps",
        "-n",
        kube_namespace,
        f"--as=system:serviceaccount:{kube_namespace}:default",
        check=False,
    )
    assert p.stdout.strip() == "yes"
