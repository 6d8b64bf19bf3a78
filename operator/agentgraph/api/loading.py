"""Parse YAML text into AgentGraphs and HardwareProfiles; every error names its field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pydantic
import yaml

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile

KINDS: dict[str, type[AgentGraph] | type[HardwareProfile]] = {
    "AgentGraph": AgentGraph,
    "HardwareProfile": HardwareProfile,
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, but ``1e9`` is a number, as in YAML 1.2 and in kubectl: PyYAML
    alone reads an exponent without a dot as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class LoadError(Exception):
    """One line per problem: ``SOURCE: WHERE: FIELD: message``."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


@dataclass
class Documents:
    graphs: list[AgentGraph] = field(default_factory=list)
    profiles: list[HardwareProfile] = field(default_factory=list)


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(document)"


def validation_lines(prefix: str, error: pydantic.ValidationError) -> list[str]:
    lines = []
    for e in error.errors():
        message = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "int_parsing_size":  # 1e308 for an integer field
            message = f"{e['input']!r} is far too large for this whole-number field"
        lines.append(f"{prefix}: {field_path(tuple(e['loc']))}: {message}")
    return lines


def parse(text: str, source: str) -> Documents:
    """All documents of a (multi-document) YAML text; raises LoadError with every problem."""
    try:
        raw = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise LoadError([f"{source}: {where}malformed YAML: {problem}"]) from None
    docs = Documents()
    lines: list[str] = []
    for i, doc in enumerate(raw):
        prefix = f"{source}: document {i + 1}"
        if not isinstance(doc, dict):
            lines.append(f"{prefix}: expected a mapping with apiVersion, kind, metadata, spec")
            continue
        kind = doc.get("kind")
        if kind not in KINDS:
            lines.append(f"{prefix}: kind: '{kind}' is not one of {', '.join(sorted(KINDS))}")
            continue
        name = _name(doc)
        try:
            obj = KINDS[kind].model_validate(doc)
        except pydantic.ValidationError as e:
            lines.extend(validation_lines(f"{source}: {kind}/{name}", e))
            continue
        if isinstance(obj, AgentGraph):
            docs.graphs.append(obj)
        else:
            docs.profiles.append(obj)
    if lines:
        raise LoadError(lines)
    return docs


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
