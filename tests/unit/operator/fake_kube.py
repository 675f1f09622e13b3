"""An in-memory stand-in for kubetune_operator.k8s.Kube: the same methods, a dict for the cluster."""

from __future__ import annotations

import copy
import itertools

from kubetune_operator.k8s import ApiError

_uids = itertools.count(1)


class FakeKube:
    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.calls: list[tuple] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: dict[str, str] = {}  # kind -> message: apply fails like an apiserver 422

    def add(self, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, kind, namespace, name):
        self.calls.append(("get", kind, name))
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind, namespace, labels):
        self.calls.append(("list", kind))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and ns == namespace and labels.items() <= o["metadata"].get("labels", {}).items()
        ]

    def events_about(self, namespace, kind, name):
        self.calls.append(("events_about", kind, name))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == "Event" and ns == namespace and o["involvedObject"] == {"kind": kind, "name": name}
        ]

    def apply(self, obj):
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        if obj["kind"] in self.refuse:
            raise ApiError(422, self.refuse[obj["kind"]], "Invalid")
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        existing = self.objects.get(key)
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = existing["metadata"]["uid"] if existing else f"uid-{next(_uids)}"
        self.objects[key] = stored
        return stored

    def patch_status(self, namespace, name, patch):
        self.calls.append(("patch_status", name))
        job = self.objects[("FineTuneJob", namespace, name)]
        status = job.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = copy.deepcopy(value)
        return job

    def scale(self, kind, namespace, name, replicas):
        self.calls.append(("scale", kind, name, replicas))
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "not found", "NotFound")
        obj["spec"]["replicas"] = replicas

    def delete(self, kind, namespace, name, uid=None, grace=None):
        self.calls.append(("delete", kind, name))
        obj = self.objects.get((kind, namespace, name))
        if obj is not None and (uid is None or obj["metadata"]["uid"] == uid):
            del self.objects[(kind, namespace, name)]

    def post_event(self, job, type_, reason, message):
        self.events.append((type_, reason, message))

    def writes(self):
        return [c for c in self.calls if c[0] not in ("get", "list", "events_about")]
