"""The README says what the code does: its YAML validates and its field names exist."""

from __future__ import annotations

import re
from typing import Any

import yaml

from agentgraph.api import crdgen
from agentgraph.api.graph import Step
from agentgraph.api.loading import parse
from agentgraph.api.plan import Plan
from builders import ROOT

README = (ROOT / "README.md").read_text()


def _snippets() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_every_yaml_snippet_validates() -> None:
    snippets = _snippets()
    assert snippets
    for text in snippets:
        doc = yaml.safe_load(text)
        if isinstance(doc, dict) and "kind" in doc and "apiVersion" in doc:
            assert parse(text, "README.md").graphs or parse(text, "README.md").profiles
        else:  # a fragment of spec.steps
            for step in doc if isinstance(doc, list) else [doc]:
                Step.model_validate(step)


def _names(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        out.update(node.get("properties", {}))
        out.update(str(v) for v in node.get("enum", []))
        for value in node.values():
            _names(value, out)
    elif isinstance(node, list):
        for value in node:
            _names(value, out)
    return out


def _section(heading: str) -> str:
    """The text under the heading that starts so, up to the next heading."""
    return README.split(f"\n{heading}")[1].split("\n", 1)[1].split("\n#")[0]


def test_crd_reference_names_only_fields_the_schema_has() -> None:
    section = _section("### AgentGraph `spec`") + _section("### HardwareProfile `spec`")
    schema: set[str] = set()
    for doc in crdgen.all_crds().values():
        _names(doc, schema)
    schema |= {"nvidia", "amd", "habana"}  # resourceName values: nvidia.com/gpu, ...
    # camelCase words in backticks that stand alone or start a path (`steps[].tool`)
    named = {m.group(1) for m in re.finditer(r"`([a-z][A-Za-z0-9]*)(?:[`\[.{ ])", section)}
    named |= {w for m in re.finditer(r"`[a-z][^`]*`", section)
              for w in re.findall(r"\b([a-z][a-zA-Z0-9]*[A-Z][A-Za-z0-9]*)\b", m.group(0))}
    unknown = sorted(n for n in named if n not in schema)
    assert not unknown, f"README's CRD reference names fields no schema has: {unknown}"


def test_plan_reference_names_only_fields_the_plan_has() -> None:
    section = _section("### Plan (the CLI's output")
    schema = _names(Plan.model_json_schema(by_alias=True, mode="serialization"), set())
    named = {w for m in re.finditer(r"`[a-z][^`]*`", section)
             for w in re.findall(r"\b([a-z][a-zA-Z0-9]*)\b", m.group(0))}
    unknown = sorted(n for n in named if n not in schema)
    assert not unknown, f"README's Plan reference names fields the Plan has not: {unknown}"
