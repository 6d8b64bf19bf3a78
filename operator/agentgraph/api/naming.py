"""Names and labels shared by the operator, the gateway and the workers: one place, so what the
operator writes is what the gateway selects on."""

from __future__ import annotations

import hashlib
import re

from agentgraph.api import GROUP

MAX_NAME = 63
LABEL_GRAPH = f"{GROUP}/graph"
LABEL_STEP = f"{GROUP}/step"
LABEL_PHASE = f"{GROUP}/phase"
LABEL_POOL = f"{GROUP}/pool"
LABEL_COMPONENT = f"{GROUP}/component"  # "worker" or "gateway"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentgraph"}
# A top-level step may not take this name: its objects would collide with the gateway's.
GATEWAY = "gateway"


def object_name(graph: str, step: str, phase: str | None) -> str:
    """DNS-1123 name of a step's Deployment/Service: graph-step[-phase], dots made dashes."""
    raw = "-".join(p for p in (graph, step, phase) if p)
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower())
    if len(name) > MAX_NAME:
        # Only very long sub-agent paths get here; sha256, not hash(): stable across processes.
        digest = hashlib.sha256(raw.encode()).hexdigest()[:6]
        name = f"{name[: MAX_NAME - 7]}-{digest}"
    return name.strip("-")


def gateway_name(graph: str) -> str:
    """The gateway's Deployment, Service, ServiceAccount, Role and RoleBinding."""
    return object_name(graph, GATEWAY, None)


def runtime_config_name(graph: str) -> str:
    """The ConfigMap holding the graph as the gateway executes it."""
    return object_name(graph, "runtime", None)


def selector(graph: str, step: str, phase: str | None) -> dict[str, str]:
    """The labels that pick one step phase's pods (the pool is left out: a move rolls over)."""
    return {LABEL_GRAPH: graph, LABEL_STEP: re.sub(r"[^A-Za-z0-9_.-]", "-", step),
            LABEL_PHASE: phase or "run"}
