"""The one module that talks to the Kubernetes API.

It uses the official client's configuration, authentication and connection pool, but speaks plain
JSON: objects go in and come out as dicts (the builders' and the status logic's currency), and
children are written with server-side apply under one field manager, so applying the same object
twice is a no-op and a restarted operator never creates duplicates.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_operator.spec import GROUP, PLURAL, VERSION

FIELD_MANAGER = "kubetune-operator"
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)

# kind -> (API path prefix, plural). Only the kinds the operator touches.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


class ApiError(Exception):
    """A refused API request, with the apiserver's own message (what a user needs to fix it)."""

    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def invalid(self) -> bool:
        """The object itself is wrong (retrying will not help; the job's spec must change): 413 is a
        request larger than the apiserver accepts."""
        return self.status in (400, 413, 422)


def load_api_client() -> client.ApiClient:
    """The current KUBECONFIG (or ~/.kube/config); the pod's service account inside a cluster."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    out = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or load_api_client()
        self.instance = socket.gethostname()

    # --- transport ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded body (None for 404), raises ApiError otherwise."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, full_url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=url, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        try:
            response = self.api.call_api(method, full_url, header_params=headers, body=body,
                                         _request_timeout=REQUEST_TIMEOUT)  # fmt: skip
            data = response.read()
        except ApiException as error:
            raise ApiError(error.status or 0, str(error.reason), error.reason or "") from error
        if response.status == 404:
            return None
        if response.status >= 400:
            raise _error(response.status, data)
        return json.loads(data) if data else {}

    # --- reads -------------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", path(kind, namespace, name))

    def list(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self.request("GET", path(kind, namespace), query={"labelSelector": selector})
        return (found or {}).get("items", [])

    # `list` below this point names the method above; the builtin is spelled builtins.list.
    def events_about(self, namespace: str, kind: str, name: str) -> builtins.list[dict[str, Any]]:
        """The Events whose involvedObject is this object (the StatefulSet controller's FailedCreate, ...)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        found = self.request("GET", path("Event", namespace), query={"fieldSelector": selector})
        return (found or {}).get("items", [])

    def list_jobs(self, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        prefix, plural = KINDS["FineTuneJob"]
        url = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        return (self.request("GET", url) or {}).get("items", [])

    # --- writes ------------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Server-side apply: create or converge, owning exactly the fields in `obj`."""
        meta = obj["metadata"]
        return self.request(
            "PATCH",
            path(obj["kind"], meta["namespace"], meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=dict(obj),
            content_type="application/apply-patch+yaml",
        )

    def patch_status(
        self, namespace: str, name: str, status_patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A merge patch of only the keys given (the operator writes the whole status, key by key)."""
        return self.request(
            "PATCH",
            path("FineTuneJob", namespace, name, "status"),
            query={"fieldManager": FIELD_MANAGER},
            body={"status": dict(status_patch)},
            content_type="application/merge-patch+json",
        )

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.request(
            "PATCH",
            path(kind, namespace, name),
            query={"fieldManager": FIELD_MANAGER},
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )

    def delete(
        self, kind: str, namespace: str, name: str, uid: str | None = None, grace: int | None = None
    ) -> None:
        """Delete (no error when already gone). With `uid`, only that incarnation of the object."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.request("DELETE", path(kind, namespace, name), body=body)
        except ApiError as error:
            if error.status != 409:  # 409: the uid precondition failed, i.e. it is already another object
                raise

    def post_event(self, job: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": job.get("apiVersion"),
                "kind": job.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER, "host": self.instance},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", path("Event", meta["namespace"]), body=event)


def _error(status: int, data: bytes) -> ApiError:
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ApiError(status, data.decode(errors="replace")[:2000])
    return ApiError(status, body.get("message", ""), body.get("reason", ""))
