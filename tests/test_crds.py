"""crds/ is generated from the models: stale copies fail; the schema is structural."""

import json
from pathlib import Path
from typing import Any

import yaml

from agentgraph.api import crdgen
from builders import ROOT

CRDS = ROOT / "crds"


def test_committed_crds_match_the_models() -> None:
    for name, doc in crdgen.all_crds().items():
        path = CRDS / name
        assert path.exists(), f"{path} missing: run `make crds`"
        expected = crdgen.HEADER + yaml.safe_dump(doc, sort_keys=False)
        assert path.read_text() == expected, f"{path} is stale: run `make crds`"


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties",):
            for k, v in node.get(key, {}).items():
                out += walk(v, f"{path}.{k}")
        if "items" in node:
            out += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schemas_are_structural_and_bounded() -> None:
    for name, doc in crdgen.all_crds().items():
        schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        text = yaml.safe_dump(schema)
        for banned in ("$ref", "anyOf", "$defs", "additionalProperties: false", "const:"):
            assert banned not in text, (name, banned)
        for path, node in walk(schema):
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), (name, path)
            if node.get("type") == "array":
                assert "maxItems" in node, (name, path)


def test_small_enough_for_client_side_apply_and_helm() -> None:
    # What counts is the JSON the API server, kubectl's last-applied annotation (256 KiB at
    # most) and Helm's release store, not the indented YAML file: a quarter of the limit.
    for name, doc in crdgen.all_crds().items():
        assert len(json.dumps(doc, separators=(",", ":"))) < 256 * 1024 // 4, name


def test_steps_are_a_map_list_keyed_by_name() -> None:
    doc = crdgen.crd(crdgen.AgentGraph)
    steps = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["steps"]
    assert steps["x-kubernetes-list-type"] == "map"
    assert steps["x-kubernetes-list-map-keys"] == ["name"]
    rules = steps["items"]["x-kubernetes-validations"]
    assert any(r["message"] == "kind 'llm' needs field 'llm'" for r in rules)


def test_cli_writes_the_crds(tmp_path: Path) -> None:
    from agentgraph import cli

    assert cli.main(["crds", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.all_crds())
