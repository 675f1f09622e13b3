from pathlib import Path

import pytest
import yaml
from kubetune_operator.crd import (
    IMMUTABLE,
    SCHEDULING,
    crd,
    render_crd_yaml,
    render_peering_crd_yaml,
    structural,
)
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[3]
# The junctors and keywords a structural schema must not carry (apiextensions validation).
FORBIDDEN = {"$ref", "anyOf", "oneOf", "allOf", "not", "const", "default", "title", "examples", "uniqueItems"}


def walk(node, path="schema"):
    yield path, node
    for key in ("properties", "additionalProperties"):
        value = node.get(key)
        if isinstance(value, dict) and key == "properties":
            for name, child in value.items():
                yield from walk(child, f"{path}.{name}")
        elif isinstance(value, dict):
            yield from walk(value, f"{path}{{*}}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def schema():
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_committed_crd_is_the_generated_one():
    assert (REPO / "crds" / "finetunejob.yaml").read_text() == render_crd_yaml()


def test_every_node_is_structural():
    for path, node in walk(schema()):
        assert not FORBIDDEN & set(node), f"{path}: {sorted(FORBIDDEN & set(node))}"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        if node.get("type") == "array":
            assert "items" in node, path


def test_the_training_config_is_embedded_and_keeps_unknown_keys_for_the_validation():
    config = schema()["properties"]["spec"]["properties"]["config"]
    assert config["type"] == "object" and config["x-kubernetes-preserve-unknown-fields"] is True
    assert set(config["required"]) >= {
        "base_model",
        "learning_rate",
    }  # datasets or pretraining_dataset: a rule
    assert config["properties"]["learning_rate"] == {
        "type": "number", "description": config["properties"]["learning_rate"]["description"],
        "minimum": 0, "exclusiveMinimum": True,
    }  # fmt: skip
    dataset = config["properties"]["datasets"]["items"]
    assert dataset["type"] == "object" and dataset["x-kubernetes-preserve-unknown-fields"] is True
    assert config["properties"]["fsdp"]["items"]["enum"][0] == "full_shard"
    # Two shapes (true | "auto"): the schema accepts any value, the validation decides.
    assert config["properties"]["bf16"].get("x-kubernetes-preserve-unknown-fields") is True


def test_kubernetes_objects_in_the_spec_are_kept_whole():
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["tolerations"]["items"] == {
        "type": "object",
        "maxProperties": 256,
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert spec["env"]["items"]["required"] == ["name"]
    assert spec["env"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["resources"]["properties"]["limits"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }
    assert spec["workers"]["minimum"] == 1 and spec["workers"]["type"] == "integer"


def test_status_subresource_printer_columns_and_names():
    resource = crd()
    version = resource["spec"]["versions"][0]
    assert resource["metadata"]["name"] == "finetunejobs.kubetune.dev"
    assert resource["spec"]["names"]["shortNames"] == ["ftj"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Step", "Loss", "Workers", "Fetched", "Reason", "Age"]
    progress = schema()["properties"]["status"]["properties"]["progress"]
    assert progress["x-kubernetes-preserve-unknown-fields"] is True
    assert {"step", "totalSteps", "loss", "completed", "lastCheckpoint"} <= set(progress["properties"])


def test_cel_rules_make_the_run_immutable_but_not_suspend():
    rules = {
        r.get("fieldPath", ""): r["rule"] for r in schema()["properties"]["spec"]["x-kubernetes-validations"]
    }
    assert rules[".config"] == (
        "has(self.config) == has(oldSelf.config) && (!has(self.config) || self.config == oldSelf.config)"
    )
    assert "self.workers == oldSelf.workers" in rules[".workers"]
    assert ".suspend" not in rules and ".runPolicy" not in rules
    assert set(IMMUTABLE) | set(SCHEDULING) == {k.lstrip(".") for k in rules if k}
    assert rules[".nodeSelector"].startswith("(has(oldSelf.suspend) && oldSelf.suspend) || (")
    assert rules[""] == "has(self.config) != has(self.configMapRef)"
    root = schema()["x-kubernetes-validations"][0]
    assert root["rule"] == "self.metadata.name.size() <= 52"


def test_crd_fits_in_a_client_side_apply_annotation():
    # `kubectl apply` (client-side) stores the whole object in an annotation limited to 256 KiB.
    assert len(render_crd_yaml().encode()) < 200_000


def test_the_file_is_valid_yaml_with_one_document():
    assert yaml.safe_load(render_crd_yaml())["kind"] == "CustomResourceDefinition"


class Inner(BaseModel):
    size: int | str
    name: str | None = None


class Outer(BaseModel):
    inner: Inner
    items: list[Inner] = []
    mapping: dict[str, float] = {}
    anything: object = None
    either: bool | str = False
    tags: list = []


@pytest.mark.parametrize("keep_unknown", [False, True])
def test_structural_conversion_of_pydantic_shapes(keep_unknown):
    raw = Outer.model_json_schema()
    defs = raw.pop("$defs")
    raw["properties"]["inner"] = defs["Inner"]
    raw["properties"]["items"]["items"] = defs["Inner"]
    out = structural(raw, keep_unknown=keep_unknown)
    props = out["properties"]
    assert props["inner"]["properties"]["size"] == {"x-kubernetes-int-or-string": True}
    assert props["inner"]["properties"]["name"] == {"type": "string", "nullable": True}
    assert props["items"]["items"]["type"] == "object"
    assert props["mapping"]["additionalProperties"] == {"type": "number"}
    assert props["anything"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert props["either"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert props["tags"]["items"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert out.get("x-kubernetes-preserve-unknown-fields", False) is keep_unknown
    assert "title" not in out and "default" not in props["items"]


def test_peering_crds_for_replicas():
    docs = list(yaml.safe_load_all(render_peering_crd_yaml()))
    assert [d["spec"]["names"]["kind"] for d in docs] == ["ClusterKopfPeering", "KopfPeering"]
    assert [d["spec"]["scope"] for d in docs] == ["Cluster", "Namespaced"]
    assert all(d["spec"]["group"] == "kopf.dev" for d in docs)


def _unbounded(node, path="spec"):
    """Paths of strings, lists and maps in a schema that the apiserver would accept at any size."""
    kind = node.get("type")
    found = []
    if kind == "string" and "enum" not in node and "maxLength" not in node:
        found.append(path)
    if kind == "array":
        found += [] if "maxItems" in node else [path]
        found += _unbounded(node["items"], path + "[]")
    if kind == "object":
        found += [] if "maxProperties" in node else [path]
        for key, child in (node.get("properties") or {}).items():
            found += _unbounded(child, f"{path}.{key}")
    return found


def test_every_string_list_and_map_of_the_spec_is_bounded():
    spec = schema()["properties"]["spec"]
    assert _unbounded(spec) == []
    config = spec["properties"]["config"]
    assert config["maxProperties"] == 512
    assert spec["properties"]["image"]["maxLength"] == 4096
    assert spec["properties"]["volumes"]["maxItems"] == 256
