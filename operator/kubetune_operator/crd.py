"""The FineTuneJob CRD, generated from the pydantic models (spec.py and kubetune.config).

    python scripts/generate.py      # writes crds/finetunejob.yaml from render_crd_yaml()

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no $ref, no anyOf carrying
types, no `const`, no `additionalProperties: false`. `structural()` turns pydantic's JSON schema into
one. Where a value really takes two shapes (`bf16: true | auto`) the node accepts any value and the
webhook/operator validation, which run the pydantic models themselves, decide.

Inside `spec.config` every object keeps unknown keys (x-kubernetes-preserve-unknown-fields) instead
of letting the apiserver prune them silently: a misspelt key must reach the validation, which names
it and suggests the right spelling.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from kubetune.config import training_config_json_schema

from kubetune_operator.progress import REWARD_KEYS, TRACKING_ENTRIES, TRACKING_KINDS, TRACKING_TEXT_LIMIT
from kubetune_operator.spec import (
    API_VERSION,
    GROUP,
    KIND,
    LIST_MAX,
    MAP_MAX,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    TEXT_MAX,
    VERSION,
    FineTuneJobSpec,
)

# Schema keywords Kubernetes accepts and we keep; everything else (title, default, examples, ...) goes.
# Defaults are dropped on purpose: the apiserver would write them into the stored spec, and GitOps
# tools would then see a spec that differs from the one in git.
KEPT = {
    "type", "description", "properties", "required", "items", "enum", "nullable", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "minProperties", "maxProperties", "additionalProperties", "format",
}  # fmt: skip
FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "uri", "email", "uuid"}
ANY = {"x-kubernetes-preserve-unknown-fields": True}

# Fields that define the run. Changing them mid-run would make checkpoints meaningless or the
# workers disagree; a new run is a new FineTuneJob. (As for a Kubernetes Job's pod template.)
IMMUTABLE = (
    "config", "configMapRef", "image", "workers", "gpusPerWorker", "processesPerWorker", "resources", "storage",
    "cache", "env", "envFrom", "volumes", "volumeMounts", "serviceAccountName", "shmSize", "podSecurityContext",
    "securityContext",
)  # fmt: skip
# Where pods may run can change only while the job is suspended (e.g. a queue such as Kueue picks
# the nodes, then unsuspends): the new template applies to the pods created on resume.
SCHEDULING = ("nodeSelector", "tolerations", "affinity", "priorityClassName")
# Bounds inside spec.config, where the training config's own schema sets none: far above any real
# config (a chat template is a few KB), low enough that the apiserver refuses a bloated object itself.
CONFIG_TEXT_MAX = 65_536
CONFIG_LIST_MAX = 1024
CONFIG_MAP_MAX = 512


def structural(node: Any, *, keep_unknown: bool = False) -> dict[str, Any]:
    """A JSON schema node (refs already inlined) as a Kubernetes structural schema node."""
    if not isinstance(node, dict):
        return dict(ANY)
    node = copy.deepcopy(node)
    nullable = False
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("type"), list):
        types = [t for t in node["type"] if t != "null"]
        nullable = len(types) < len(node["type"])
        node["type"] = types[0] if len(types) == 1 else None
        if node["type"] is None:
            node.pop("type")
            node["anyOf"] = [{"type": t} for t in types]
    for junctor in ("anyOf", "oneOf"):
        if junctor in node:
            every = node.pop(junctor)
            branches = [b for b in every if b != {"type": "null"}]
            nullable = nullable or len(branches) < len(every)
            merged = _merge_branches(branches)
            if merged is None:
                return _described({**ANY, **({"nullable": True} if nullable else {})}, node)
            node = {**merged, **node}
    if "enum" in node and None in node["enum"]:
        node["enum"] = [v for v in node["enum"] if v is not None]
        nullable = True
    if "allOf" in node:  # pydantic wraps a described $ref as allOf: [target]
        for part in node.pop("allOf"):
            node = {**part, **node}
    kind = node.get("type")
    out: dict[str, Any] = {k: v for k, v in node.items() if k in KEPT}
    if out.get("format") not in FORMATS:
        out.pop("format", None)
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = out[bound]
            out[bound] = True
    if nullable:
        out["nullable"] = True
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["x-kubernetes-int-or-string"] = True
        return out
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        extra = node.get("additionalProperties")
        if "properties" in node:
            out["properties"] = {
                k: structural(v, keep_unknown=keep_unknown) for k, v in node["properties"].items()
            }
            out.pop("additionalProperties", None)
            if keep_unknown or extra is True or isinstance(extra, dict):
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, keep_unknown=keep_unknown)
        else:
            out.pop("additionalProperties", None)
            out.update(ANY)
        return out
    if kind == "array":
        out["items"] = structural(node.get("items", {}), keep_unknown=keep_unknown)
        return out
    if kind in ("string", "integer", "number", "boolean"):
        return out
    return _described(dict(ANY), out)


def _merge_branches(branches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One schema for all branches, or None when they only agree on 'any value'."""
    if len(branches) == 1:
        return branches[0]
    types = {b.get("type") for b in branches}
    if types == {"integer", "string"} and all(set(b) <= {"type"} for b in branches):
        return {"x-kubernetes-int-or-string": True}
    return None


def _described(out: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if node.get("description"):
        out["description"] = node["description"]
    return out


def _spec_schema() -> dict[str, Any]:
    raw = FineTuneJobSpec.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    spec = bounded(structural(_inline(raw, defs)), TEXT_MAX, LIST_MAX, MAP_MAX)
    config = structural(training_config_json_schema(), keep_unknown=True)
    spec["properties"]["config"] = {
        **bounded(config, CONFIG_TEXT_MAX, CONFIG_LIST_MAX, CONFIG_MAP_MAX),
        "description": FineTuneJobSpec.model_fields["config"].description,
    }
    spec["x-kubernetes-validations"] = _spec_rules()
    return spec


def bounded(node: dict[str, Any], text: int, items: int, props: int) -> dict[str, Any]:
    """Every string, list and map of a structural schema capped where the models set no bound of their own."""
    out = dict(node)
    kind = out.get("type")
    if kind == "string" and "enum" not in out:
        out.setdefault("maxLength", text)
    elif kind == "array":
        out.setdefault("maxItems", items)
        out["items"] = bounded(out["items"], text, items, props)
    elif kind == "object":
        out.setdefault("maxProperties", props)
        if "properties" in out:
            out["properties"] = {k: bounded(v, text, items, props) for k, v in out["properties"].items()}
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = bounded(out["additionalProperties"], text, items, props)
    return out


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = copy.deepcopy(defs[ref.rsplit("/", 1)[1]])
            target.update({k: v for k, v in node.items() if k != "$ref"})
            return _inline(target, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _unchanged(name: str) -> str:
    # has() and plain equality, not `self.?x == oldSelf.?x`: the apiserver's cost estimate for
    # optional equality on unbounded objects exceeds the CEL budget, this form's does not.
    return f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"


def _spec_rules() -> list[dict[str, Any]]:
    rules = [
        {
            "rule": "has(self.config) != has(self.configMapRef)",
            "message": "set exactly one of spec.config (inline) and spec.configMapRef",
        }
    ]
    for name in IMMUTABLE:
        rules.append(
            {
                "rule": _unchanged(name),
                "message": f"spec.{name} is immutable: it defines the run (create a new FineTuneJob instead)",
                "fieldPath": f".{name}",
                "reason": "FieldValueForbidden",
            }
        )
    for name in SCHEDULING:
        rules.append(
            {
                "rule": f"(has(oldSelf.suspend) && oldSelf.suspend) || ({_unchanged(name)})",
                "message": f"spec.{name} can change only while the job is suspended",
                "fieldPath": f".{name}",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


def _status_schema() -> dict[str, Any]:
    text = {"type": "string"}
    integer = {"type": "integer"}
    time = {"type": "string", "format": "date-time"}
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": text,
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": text,
            "message": text,
            "lastTransitionTime": time,
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }
    progress = {
        "type": "object",
        "description": "Live progress pushed by rank 0 (docs/internals.md).",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "step": integer,
            "totalSteps": integer,
            "epoch": {"type": "number"},
            "loss": {"type": "number"},
            "learningRate": {"type": "number"},
            "tokensPerSecond": {"type": "number"},
            "trainedTokens": integer,
            "etaSeconds": {"type": "number"},
            "lastCheckpoint": text,
            "resumedFromStep": integer,
            "completed": {"type": "boolean"},
            "percent": {
                "type": "string",
                "description": 'step/totalSteps as a whole percentage, e.g. "25%" (the Progress column).',
            },
            "outputDir": text,
            "updatedAt": time,
            "rewards": {
                "type": "object",
                "description": "Preference runs (rl:): trl's reward means of the latest train log line "
                "(rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, "
                "logps/rejected).",
                "properties": {key: {"type": "number"} for key in REWARD_KEYS},
            },
        },
    }
    fetch = {
        "type": "object",
        "description": (
            "The fetch step's progress: remote sources (hub models and datasets) downloaded once into the "
            "cache volume before training (docs/kubernetes.md, 'Models and data')."
        ),
        "properties": {
            "sources": integer | {"description": "Remote sources of the config."},
            "source": integer | {"description": "The one being fetched (1-based)."},
            "current": text | {"description": "Its config key, name and revision."},
            "filesDone": integer,
            "filesTotal": integer,
            "bytesDone": integer
            | {"description": "Bytes of all sources fetched so far (cached ones included)."},
            "bytesTotal": integer,
            "fetched": text
            | {"description": 'bytesDone/bytesTotal, e.g. "1.2GB/5.0GB" (the Fetched column).'},
            "done": {"type": "boolean"},
            "error": text | {"description": "Why the fetch failed."},
        },
    }
    tracker_text = {"type": "string", "maxLength": TRACKING_TEXT_LIMIT}
    tracking = {
        "type": "array",
        "description": (
            "The experiment tracker runs rank 0 writes to (docs/kubernetes.md, 'Experiment tracking'): where "
            "to find the charts. URIs never carry credentials."
        ),
        "maxItems": TRACKING_ENTRIES,
        "items": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": list(TRACKING_KINDS)},
                "uri": tracker_text | {"description": "MLflow tracking URI."},
                "project": tracker_text | {"description": "W&B project."},
                "entity": tracker_text | {"description": "W&B entity."},
                "experiment": tracker_text | {"description": "MLflow experiment name, or the W&B run name."},
                "experimentId": tracker_text,
                "runId": tracker_text,
                "mode": tracker_text | {"description": "W&B mode (online, offline)."},
                "logDir": tracker_text | {"description": "TensorBoard event files, on the outputs volume."},
                "url": tracker_text | {"description": "The run's page, where one can be built."},
            },
        },
    }
    return {
        "type": "object",
        "properties": {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Fetching", "Running", "Succeeded", "Failed", "Suspended"],
            },
            "reason": text,
            "message": text,
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "observedGeneration": {"type": "integer", "format": "int64"},
            "startTime": time,
            "completionTime": time,
            "restarts": integer,
            "preemptions": {
                "type": "integer",
                "description": "Group restarts after a preemption (exit 143 after a checkpoint); not counted in restarts.",
            },
            "workers": {"type": "string", "description": "Running workers / desired workers."},
            "readyWorkers": integer,
            "outputs": {
                "type": "object",
                "description": "Where the finished run's outputs are (outputDir, volume; uri: the "
                "object-store prefix output_uri uploaded the result to), and rank 0's summary.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "progress": progress,
            "fetch": fetch,
            "tracking": tracking,
        },
    }


def crd() -> dict[str, Any]:
    columns = [
        ("Phase", "string", ".status.phase", 0),
        ("Progress", "string", ".status.progress.percent", 0),
        ("Step", "integer", ".status.progress.step", 0),
        ("Loss", "number", ".status.progress.loss", 0),
        ("Workers", "string", ".status.workers", 0),
        # Bytes the fetch step has downloaded (or found cached) of the remote sources.
        ("Fetched", "string", ".status.fetch.fetched", 0),
        # Why a job is not running (FailedCreate, WorkersBlocked, ...) without -o wide.
        ("Reason", "string", ".status.reason", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Restarts", "integer", ".status.restarts", 1),
        ("ETA", "number", ".status.progress.etaSeconds", 1),
        ("Margin", "number", ".status.progress.rewards.margins", 1),  # preference runs (rl:)
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"priority": pr} if pr else {})}
                        for n, t, p, pr in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{KIND} ({API_VERSION}): a config-driven LLM fine-tune run on Kubernetes.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": _status_schema(),
                            },
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                                    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                                    "(it names the job's StatefulSet)",
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


FIRST = ("type", "format", "description")


def _ordered(node: Any) -> Any:
    """type, format and description first in every schema node: the file is read by people too."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    keys = [k for k in FIRST if k in node] + [k for k in node if k not in FIRST]
    return {k: _ordered(node[k]) for k in keys}


def render_crd_yaml() -> str:
    header = "# Generated by scripts/generate.py from kubetune_operator.crd; do not edit.\n"
    return header + yaml.safe_dump(_ordered(crd()), sort_keys=False, width=120)


def peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (KopfPeering, ClusterKopfPeering): how replicas learn of each other.

    With them installed and a peering object named like `--peering` (default `kubetune`), only the
    live replica with the highest priority works; the others wait until its keep-alive lapses.
    """
    out = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = kind.lower() + "s"
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev", "labels": {"app.kubernetes.io/name": "kubetune"}},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


def render_peering_crd_yaml() -> str:
    header = "# Generated by scripts/generate.py from kubetune_operator.crd; do not edit.\n"
    return header + "---\n".join(yaml.safe_dump(doc, sort_keys=False, width=120) for doc in peering_crds())
