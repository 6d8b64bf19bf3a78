"""Plan -> Kubernetes objects. Pure: the same graph, plan and profiles give the same manifests.

One Deployment and one Service per step (per phase for LLM steps). The pod template pins the
chosen pool by its node labels, tolerates its taints and requests its devices. The selector names
the graph, step and phase but not the pool, so a step that moves pools is rolled over in place
rather than deleted first. Children carry only our labels: never the parent's
``app.kubernetes.io/instance`` or ``argocd.argoproj.io/*`` (Argo CD would adopt and prune them).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentgraph.api import API_VERSION, GROUP
from agentgraph.api.graph import AgentGraph, Step
from agentgraph.api.hardware import DeviceType, HardwareProfile
from agentgraph.api.plan import Assignment, Plan

Manifest = dict[str, Any]
# Steps without a container run a placeholder until the reference step workers (runtime/, with
# the gateway) exist: pause starts anywhere, so pods become Ready on kind as on kwok.
DEFAULT_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_PORT = 8080
MAX_NAME = 63
LABEL_GRAPH = f"{GROUP}/graph"
LABEL_STEP = f"{GROUP}/step"
LABEL_PHASE = f"{GROUP}/phase"
LABEL_POOL = f"{GROUP}/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentgraph"}


def object_name(graph: str, step: str, phase: str | None) -> str:
    """DNS-1123 name of a step's Deployment/Service: graph-step[-phase], dots made dashes."""
    raw = "-".join(p for p in (graph, step, phase) if p)
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower())
    if len(name) > MAX_NAME:
        # Only very long sub-agent paths get here; sha256, not hash(): stable across processes.
        digest = hashlib.sha256(raw.encode()).hexdigest()[:6]
        name = f"{name[: MAX_NAME - 7]}-{digest}"
    return name.strip("-")


def selector(graph: str, step: str, phase: str | None) -> dict[str, str]:
    return {LABEL_GRAPH: graph, LABEL_STEP: re.sub(r"[^A-Za-z0-9_.-]", "-", step),
            LABEL_PHASE: phase or "run"}


def _step_spec(graph: AgentGraph, flat_name: str) -> Step:
    """The spec of a (possibly sub-agent) step by its flattened name 'agent.step'."""
    steps: Sequence[Step] = graph.spec.steps
    parts = flat_name.split(".")
    for i, part in enumerate(parts):
        step = next(s for s in steps if s.name == part)
        if i == len(parts) - 1:
            return step
        assert step.agent is not None
        steps = step.agent.steps
    raise KeyError(flat_name)


def _quantity_cpu(cores: float) -> str:
    millis = max(1, math.ceil(cores * 1000))
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _quantity_memory(gib: float) -> str:
    """In the API server's canonical form ('0.5' -> '512Mi', '2' -> '2Gi'), so what is applied
    reads back unchanged and an unchanged child is never rewritten."""
    mib = max(1, math.ceil(gib * 1024))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _resources(a: Assignment, profile: HardwareProfile, step: Step) -> dict[str, Any]:
    spec = profile.spec
    memory_gb = 1.0
    for block in (step.tool, step.compute):
        if block is not None:
            memory_gb = block.memory_gb
    if spec.device_type is DeviceType.CPU:
        requests = {"cpu": _quantity_cpu(a.units_per_replica),
                    "memory": _quantity_memory(memory_gb)}
        return {"requests": requests}
    devices = a.units_per_replica
    host_cpu = _quantity_cpu(devices * spec.cores)  # the host cores that come with the devices
    if devices < 1:  # host-CPU work on an accelerator node: its share of host cores, no device
        return {"requests": {"cpu": host_cpu, "memory": _quantity_memory(memory_gb)}}
    count = str(math.ceil(devices))
    return {"requests": {"cpu": host_cpu, "memory": _quantity_memory(memory_gb),
                         spec.resource_name: count},
            "limits": {spec.resource_name: count}}


def owner_reference(graph: AgentGraph, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentGraph", "name": graph.metadata.name,
            "uid": uid, "controller": True, "blockOwnerDeletion": True}


def render(
    graph: AgentGraph,
    plan: Plan,
    profiles: Mapping[str, HardwareProfile],
    namespace: str,
    uid: str,
) -> list[Manifest]:
    """Deployments and Services for a feasible plan, in a stable order."""
    if not plan.feasible:
        return []
    name = graph.metadata.name
    out: list[Manifest] = []
    for a in plan.assignments:
        profile = profiles[a.pool]
        step = _step_spec(graph, a.step)
        container = step.container
        port = container.port if container else DEFAULT_PORT
        obj_name = object_name(name, a.step, a.phase)
        match = selector(name, a.step, a.phase)
        labels = {**MANAGED_BY, **match}
        pod_labels = {**labels, LABEL_POOL: a.pool}
        meta = {"name": obj_name, "namespace": namespace, "labels": labels,
                "ownerReferences": [owner_reference(graph, uid)]}
        env = [{"name": k, "value": v} for k, v in sorted((container.env if container else {})
                                                          .items())]
        env += [{"name": "AGENTGRAPH_GRAPH", "value": name},
                {"name": "AGENTGRAPH_STEP", "value": a.step},
                {"name": "AGENTGRAPH_PHASE", "value": a.phase or "run"},
                {"name": "AGENTGRAPH_TENSOR_PARALLEL", "value": str(a.tensor_parallel)},
                {"name": "AGENTGRAPH_BATCH", "value": str(a.batch)}]
        tolerations = [
            {"key": t.key, "operator": "Equal" if t.value is not None else "Exists",
             **({"value": t.value} if t.value is not None else {}), "effect": t.effect}
            for t in profile.spec.pool.taints
        ]
        out.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {
                "replicas": a.replicas,
                "selector": {"matchLabels": match},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "nodeSelector": dict(profile.spec.pool.node_selector),
                        "tolerations": tolerations,
                        "containers": [{
                            "name": "step",
                            "image": container.image if container else DEFAULT_IMAGE,
                            "args": list(container.args) if container else [],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": port}],
                            "resources": _resources(a, profile, step),
                        }],
                    },
                },
            },
        })
        out.append({
            "apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": match,
                     "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
        })
    return out
