"""The Helm chart's generated parts: values.schema.json from the models below (so a misspelt or
mistyped value fails `helm install` with the path named), and the chart's copies of the CRDs and
of the shipped HardwareProfiles (a chart can only read files inside itself).

`agentgraph chart --out charts/agentgraph-operator` writes them; a test fails when they are
stale. The templates and the documented values.yaml are written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from agentgraph.api import crdgen
from agentgraph.api.hardware import HardwareProfileSpec
from agentgraph.controller.config import DNS_LABEL, MAX_WATCHED, OperatorConfig, ReplanConfig

KubeObject = dict[str, Any]  # passed through to Kubernetes as written (resources, affinity...)


class Values(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Image(Values):
    repository: str = "ghcr.io/agentgraph/agentgraph-operator"
    tag: str = ""  # empty: the chart's appVersion
    digest: str = Field("", pattern=r"^(sha256:[0-9a-f]{64})?$")  # when set, wins over tag
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class RuntimeImage(Image):
    repository: str = "ghcr.io/agentgraph/agentgraph-runtime"


class Runtime(Values):
    image: RuntimeImage = Field(default_factory=RuntimeImage)


class Crds(Values):
    enabled: bool = True  # install and upgrade the CRDs with the release
    keep: bool = True  # helm uninstall leaves them (and so every AgentGraph) in place


class ServiceAccount(Values):
    create: bool = True
    name: str = ""  # empty: the release's full name
    annotations: dict[str, str] = Field(default_factory=dict)


class ServiceMonitor(Values):
    enabled: bool = False  # needs the Prometheus Operator's CRDs
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$")
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. release: kube-prometheus-stack


class Metrics(Values):
    port: int = Field(8080, ge=1, le=65535)
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)


class OperatorSettings(Values):
    """The settings file of the operator (controller/config.py), minus what the chart sets."""

    resync_seconds: float = Field(OperatorConfig().resync_seconds, ge=5)
    keep_within: float = Field(OperatorConfig().keep_within, ge=0, le=10)
    solver_time_limit_seconds: float = Field(OperatorConfig().solver_time_limit_seconds, gt=0)
    replan: ReplanConfig = Field(default_factory=ReplanConfig)  # the operator's own model


class PodMonitor(Values):
    enabled: bool = False  # needs the Prometheus Operator's CRDs
    interval: str = Field("15s", pattern=r"^[0-9]+(ms|s|m|h)$")
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. release: kube-prometheus-stack


class PrometheusValues(Values):
    # The HTTP API the replanner queries, e.g. http://prometheus-operated.monitoring:9090.
    # Empty: no replanning from measurements (graphs show MetricsUnavailable).
    url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")
    # A PodMonitor scraping every gateway and step worker's `metrics` port, in every namespace.
    pod_monitor: PodMonitor = Field(default_factory=PodMonitor)


class Profile(Values):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    spec: HardwareProfileSpec


class HardwareProfiles(Values):
    builtin: bool = False  # install the profiles shipped in hardware_profiles/
    extra: list[Profile] = Field(default_factory=list)  # your own pools


class PodDisruptionBudget(Values):
    # With more than one replica: a drain evicts the operator's pods one at a time, so a
    # standby is always there to take the Lease.
    enabled: bool = True


class ChartValues(Values):
    image: Image = Field(default_factory=Image)
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list)
    replica_count: int = Field(2, ge=1)  # one leads (Lease), the others stand by
    pod_disruption_budget: PodDisruptionBudget = Field(default_factory=PodDisruptionBudget)
    crds: Crds = Field(default_factory=Crds)
    # Empty: every namespace (a ClusterRole); else Roles in these only (README).
    watch_namespaces: list[Annotated[str, StringConstraints(pattern=DNS_LABEL)]] = Field(
        default_factory=list, max_length=MAX_WATCHED)
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    runtime: Runtime = Field(default_factory=Runtime)
    metrics: Metrics = Field(default_factory=Metrics)
    prometheus: PrometheusValues = Field(default_factory=PrometheusValues)
    hardware_profiles: HardwareProfiles = Field(default_factory=HardwareProfiles)
    resources: KubeObject = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[KubeObject] = Field(default_factory=list)
    affinity: KubeObject = Field(default_factory=dict)
    priority_class_name: str = ""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)


def _tidy(node: Any) -> Any:
    """JSON Schema as Helm reads it: no pydantic titles; objects closed unless free-form."""
    if isinstance(node, dict):
        out = {k: _tidy(v) for k, v in node.items() if k != "title"}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def values_schema() -> dict[str, Any]:
    schema = ChartValues.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_tidy(schema)}


def generated_files(root: Path) -> dict[str, str]:
    """Chart-relative path -> content, for everything `agentgraph chart` writes."""
    files = {"values.schema.json": json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"}
    for name, doc in crdgen.all_crds().items():
        files[f"files/crds/{name}"] = crdgen.HEADER + yaml.safe_dump(doc, sort_keys=False)
    for path in sorted((root / "hardware_profiles").glob("*.yaml")):
        files[f"files/hardware_profiles/{path.name}"] = path.read_text()
    return files


def write(chart: Path, root: Path) -> list[Path]:
    written = []
    for rel, text in generated_files(root).items():
        target = chart / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
