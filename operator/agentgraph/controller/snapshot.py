"""Live Nodes and Pods -> free capacity per pool: units (devices, or cores for CPU pools) and
pod slots (a node's allocatable `pods`). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentgraph.api.hardware import DeviceType, HardwareProfile
from agentgraph.controller.render import LABEL_GRAPH

Obj = Mapping[str, Any]


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes quantities as plain numbers ('500m' -> 0.5, '8' -> 8, '64Gi' -> 64 * 2**30)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _schedulable(node: Obj) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def free_capacity(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
) -> dict[str, float]:
    """Units each pool can still give this graph: allocatable on its Ready nodes, minus what
    running pods of *other* workloads request there (this graph's own pods will be replaced)."""
    nodes = list(nodes)
    requested: dict[str, dict[str, float]] = {}
    namespace, graph = graph_key
    for pod in pods:
        meta, spec = pod.get("metadata", {}), pod.get("spec", {})
        node_name = spec.get("nodeName")
        phase = pod.get("status", {}).get("phase")
        ours = (meta.get("namespace") == namespace
                and meta.get("labels", {}).get(LABEL_GRAPH) == graph)
        if not node_name or ours or phase in ("Succeeded", "Failed"):
            continue
        used = requested.setdefault(node_name, {})
        for container in spec.get("containers", []):
            for name, value in container.get("resources", {}).get("requests", {}).items():
                used[name] = used.get(name, 0.0) + parse_quantity(value)
    out: dict[str, float] = {}
    for profile in profiles:
        spec = profile.spec
        resource = "cpu" if spec.device_type is DeviceType.CPU else spec.resource_name
        total = 0.0
        for node in nodes:
            labels = node.get("metadata", {}).get("labels", {})
            if not _matches(labels, spec.pool.node_selector) or not _schedulable(node):
                continue
            allocatable = node.get("status", {}).get("allocatable", {})
            have = parse_quantity(allocatable.get(resource, 0))
            taken = requested.get(node["metadata"]["name"], {}).get(resource, 0.0)
            total += max(0.0, have - taken)
        out[profile.name] = total
    return out


def free_pods(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
) -> dict[str, float]:
    """Pods each pool's Ready nodes can still take for this graph: allocatable ``pods`` minus
    the bound, unfinished pods of other workloads. A node that states no pod limit adds none
    (the kubelet's default is 110; a node object always carries it)."""
    nodes = list(nodes)
    namespace, graph = graph_key
    bound: dict[str, int] = {}
    for pod in pods:
        meta, spec = pod.get("metadata", {}), pod.get("spec", {})
        ours = (meta.get("namespace") == namespace
                and meta.get("labels", {}).get(LABEL_GRAPH) == graph)
        node_name = spec.get("nodeName")
        if node_name and not ours and pod.get("status", {}).get("phase") not in (
                "Succeeded", "Failed"):
            bound[node_name] = bound.get(node_name, 0) + 1
    out: dict[str, float] = {}
    for profile in profiles:
        total = 0.0
        for node in nodes:
            labels = node.get("metadata", {}).get("labels", {})
            if not _matches(labels, profile.spec.pool.node_selector) or not _schedulable(node):
                continue
            limit = parse_quantity(node.get("status", {}).get("allocatable", {}).get("pods", 0))
            total += max(0.0, limit - bound.get(node["metadata"]["name"], 0))
        out[profile.name] = total
    return out
