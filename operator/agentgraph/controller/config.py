"""The operator's settings: a YAML file (the Helm chart renders it into a ConfigMap), every field
optional, unknown fields rejected, so a misspelt setting stops the operator at start-up with the
field named instead of being ignored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import yaml
from pydantic import Field, StringConstraints, field_validator

from agentgraph.api.common import ApiModel
from agentgraph.api.loading import validation_lines
from agentgraph.controller.render import RUNTIME_IMAGE, RuntimeSettings
from agentgraph.planner.replan import ReplanSettings
from agentgraph.planner.solve import KEEP_WITHIN

_R = ReplanSettings()


class ReplanConfig(ApiModel):
    """Replanning from Prometheus (README, "Replanning"); the defaults suit a 30 s scrape."""

    interval_seconds: float = Field(30.0, ge=1)  # one measurement of every graph this often
    window_seconds: float = Field(60.0, ge=5)  # the rate() window of every query
    cooldown_seconds: float = Field(_R.cooldown_seconds, ge=0)  # nothing learned after a change
    headroom: float = Field(_R.headroom, ge=1, le=4)  # plan for measured rate x this
    scale_in_below: float = Field(_R.scale_in_below, gt=0, lt=1)
    correction_band: float = Field(_R.correction_band, ge=0, le=1)  # measured/predicted noise
    smoothing: float = Field(_R.smoothing, gt=0, le=1)
    min_calls: float = Field(_R.min_calls, ge=1)
    breach_passes: int = Field(_R.breach_passes, ge=1)
    move_cost: float = Field(0.10, ge=0, le=10)  # a move must save this fraction of its cost

    def settings(self) -> ReplanSettings:
        return ReplanSettings(headroom=self.headroom, scale_in_below=self.scale_in_below,
                              correction_band=self.correction_band, smoothing=self.smoothing,
                              cooldown_seconds=self.cooldown_seconds, min_calls=self.min_calls,
                              breach_passes=self.breach_passes)


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_WATCHED = 256


class OperatorConfig(ApiModel):
    lease_namespace: str | None = None  # None: $POD_NAMESPACE (set by the chart), else default
    # Empty: every namespace. Else only the AgentGraphs (and their children) in these; the
    # cluster-scoped reads (Nodes, HardwareProfiles, Namespaces, every Pod) stay cluster-wide.
    watch_namespaces: list[Annotated[str, StringConstraints(pattern=DNS_LABEL)]] = Field(
        default_factory=list, max_length=MAX_WATCHED)
    resync_seconds: float = Field(60.0, ge=5)  # a FULL reconcile of every graph this often
    keep_within: float = Field(KEEP_WITHIN, ge=0, le=10)  # move a running graph only to save more
    solver_time_limit_seconds: float = Field(30.0, gt=0)
    metrics_port: int = Field(8080, ge=0, le=65535)  # Prometheus /metrics; 0: off
    liveness: str = "http://0.0.0.0:8081/healthz"  # where kopf serves its liveness probe
    profiles_file: str | None = None  # HardwareProfiles (YAML) the leader installs at start-up
    # The image step pods and gateways run (`agentgraph worker`, `agentgraph gateway`).
    runtime_image: str = Field(RUNTIME_IMAGE, min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # Where the gateways' and workers' metrics are queried (Prometheus's HTTP API base URL).
    # None: no replanning from measurements; graphs show MetricsUnavailable.
    prometheus_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    replan: ReplanConfig = Field(default_factory=ReplanConfig)

    @field_validator("watch_namespaces")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return names

    @property
    def events_namespace(self) -> str:
        """Where events about cluster-scoped HardwareProfiles go: default, as the API server
        files those of Nodes; a namespaced operator, which may not write there, its own."""
        return self.lease_namespace_or_default if self.watch_namespaces else "default"

    @property
    def runtime(self) -> RuntimeSettings:
        return RuntimeSettings(image=self.runtime_image,
                               image_pull_policy=self.image_pull_policy)

    @property
    def lease_namespace_or_default(self) -> str:
        return self.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"


class ConfigError(ValueError):
    pass


def load(path: str | Path | None) -> OperatorConfig:
    """The settings in ``path``, or the defaults when there is none. Errors name the field."""
    if path is None:
        return OperatorConfig()
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return OperatorConfig.model_validate(data)
    except pydantic.ValidationError as e:
        raise ConfigError("\n".join(validation_lines(str(path), e))) from e
