"""The Helm chart's generated files are current, and its documented values.yaml is exactly the
defaults of the model its values.schema.json comes from. (Rendering, install, upgrade and
uninstall with the real helm are in e2e/test_chart.py.)"""

from __future__ import annotations

import re

import yaml

from agentgraph import chart
from builders import ROOT

CHART = ROOT / "charts" / "agentgraph-operator"


def test_generated_chart_files_are_current() -> None:
    stale = [rel for rel, text in chart.generated_files(ROOT).items()
             if not (CHART / rel).exists() or (CHART / rel).read_text() != text]
    assert not stale, f"run `make crds` (agentgraph chart): stale {stale}"
    copies = {p.name for p in (CHART / "files" / "hardware_profiles").glob("*.yaml")}
    assert copies == {p.name for p in (ROOT / "hardware_profiles").glob("*.yaml")}


def test_values_yaml_is_the_models_defaults() -> None:
    documented = yaml.safe_load((CHART / "values.yaml").read_text())
    parsed = chart.ChartValues.model_validate(documented)
    defaults = chart.ChartValues().model_dump(by_alias=True)
    assert {k: v for k, v in parsed.model_dump(by_alias=True).items() if k != "resources"} == \
        {k: v for k, v in defaults.items() if k != "resources"}
    assert set(documented) == set(defaults)  # every value is in values.yaml, documented


def test_operator_settings_in_the_chart_are_settings_the_operator_reads() -> None:
    from agentgraph.controller.config import OperatorConfig

    accepted = {f.alias for f in OperatorConfig.model_fields.values()}
    rendered = (CHART / "templates" / "configmap.yaml").read_text()
    keys = set(re.findall(r"^    (\w+):", rendered, re.MULTILINE))
    assert keys and keys <= accepted, keys - accepted
    chart_side = {f.alias for f in chart.OperatorSettings.model_fields.values()}
    assert chart_side <= accepted and chart_side <= keys


def test_schema_rejects_unknown_values() -> None:
    schema = chart.values_schema()
    assert schema["additionalProperties"] is False
    assert "replicaCount" in schema["properties"]


def test_templates_have_no_lookup_hooks_or_randomness() -> None:
    """What Argo CD needs for a stable diff: rendering depends only on the values."""
    for path in (CHART / "templates").glob("*"):
        text = path.read_text()
        for word in ("lookup", "helm.sh/hook", "randAlpha", "randNumeric", "uuidv4", "now"):
            assert not re.search(rf"\b{re.escape(word)}\b", text), (path.name, word)


def test_profiles_from_the_settings_are_marked_and_pruned_only_when_ours() -> None:
    from agentgraph.controller import profiles

    shipped = profiles.load(ROOT / "hardware_profiles" / "h100.yaml")
    wanted = profiles.manifests(shipped, "agentgraph-system")
    assert all(m["metadata"]["labels"][profiles.LABEL_SOURCE] == profiles.SOURCE for m in wanted)
    assert all(m["metadata"]["labels"][profiles.LABEL_OWNER] == "agentgraph-system"
               for m in wanted)
    assert all(m["kind"] == "HardwareProfile" and m["spec"] for m in wanted)
    installed = [
        {"metadata": {"name": "old", "labels": {profiles.LABEL_SOURCE: profiles.SOURCE}}},
        {"metadata": {"name": "by-hand", "labels": {}}},  # kubectl or Argo CD: never ours
        {"metadata": {"name": wanted[0]["metadata"]["name"],
                      "labels": {profiles.LABEL_SOURCE: profiles.SOURCE}}},
        # another release's (a namespaced install with its Lease elsewhere): never ours
        {"metadata": {"name": "theirs", "labels": {profiles.LABEL_SOURCE: profiles.SOURCE,
                                                   profiles.LABEL_OWNER: "team-b"}}},
        {"metadata": {"name": "mine", "labels": {profiles.LABEL_SOURCE: profiles.SOURCE,
                                                 profiles.LABEL_OWNER: "agentgraph-system"}}},
    ]
    names = [m["metadata"]["name"] for m in wanted]
    assert profiles.stale(installed, names, "agentgraph-system") == ["mine", "old"]
    assert profiles.stale(installed, names, "team-b") == ["old", "theirs"]
