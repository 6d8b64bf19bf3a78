"""Live Nodes and Pods -> free capacity per pool: units (devices, or cores for CPU pools) and
pod slots (a node's allocatable `pods`). Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.utils import quantity

from agentgraph.api.hardware import DeviceType, HardwareProfile
from agentgraph.api.naming import LABEL_GRAPH, LABEL_POOL

Obj = Mapping[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")  # finished pods hold nothing


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes quantities as plain numbers ('500m' -> 0.5, '8' -> 8, '64Gi' -> 64 * 2**30),
    every suffix the API server accepts ('100u', '5n', '1P', '2E', '1e3')."""
    return float(quantity.parse_quantity(value))  # type: ignore[no-untyped-call]


def pod_entry(pod: Obj) -> dict[str, Any] | None:
    """What the snapshot reads of a pod, or None when it holds nothing: pods bound to a node
    and not finished, and our step pods not bound yet (they will take their pool's room).
    Small on purpose: the caches keep one per pod in the cluster."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    labels = meta.get("labels") or {}
    node, pool = spec.get("nodeName"), labels.get(LABEL_POOL)
    if (not node and not pool) or status.get("phase") in TERMINAL_PHASES:
        return None
    containers = [{"resources": {"requests": dict((c.get("resources") or {})
                                                  .get("requests") or {})}}
                  for c in spec.get("containers") or []]
    kept = {k: v for k, v in ((LABEL_GRAPH, labels.get(LABEL_GRAPH)), (LABEL_POOL, pool)) if v}
    return {"metadata": {"namespace": meta.get("namespace"), "labels": kept},
            "spec": {"nodeName": node, "containers": containers},
            "status": {"phase": status.get("phase")}}


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _schedulable(node: Obj) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _requested(pods: Iterable[Obj], graph_key: tuple[str, str],
               skip: frozenset[tuple[str, str]] = frozenset(),
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """What unfinished pods of *other* workloads hold (this graph's own pods will be
    replaced): their containers' requests and one 'pods' slot each. Bound pods per node; our
    other graphs' pods that are not bound yet per pool (their label), since they will take
    that pool's room: without them, graphs planned at the same moment all see the same free
    room and crowd into it."""
    namespace, graph = graph_key
    by_node: dict[str, dict[str, float]] = {}
    by_pool: dict[str, dict[str, float]] = {}
    for pod in pods:
        meta, spec = pod.get("metadata", {}), pod.get("spec", {})
        labels = meta.get("labels", {})
        node_name = spec.get("nodeName")
        pool = labels.get(LABEL_POOL)
        phase = pod.get("status", {}).get("phase")
        ours = meta.get("namespace") == namespace and labels.get(LABEL_GRAPH) == graph
        held = (meta.get("namespace"), labels.get(LABEL_GRAPH)) in skip
        if ours or held or phase in TERMINAL_PHASES or not (node_name or pool):
            continue
        used = (by_node.setdefault(node_name, {}) if node_name
                else by_pool.setdefault(pool, {}))
        used["pods"] = used.get("pods", 0.0) + 1
        for container in spec.get("containers", []):
            for name, value in container.get("resources", {}).get("requests", {}).items():
                used[name] = used.get(name, 0.0) + parse_quantity(value)
    return by_node, by_pool


def _free(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
    resource_of: Callable[[HardwareProfile], str],
    combine: Callable[[list[float]], float] = sum,
    placed: frozenset[str] = frozenset(),
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, float]:
    """Per pool: allocatable ``resource_of(profile)`` on its Ready, schedulable nodes, minus
    what other workloads hold there, combined over the nodes (summed, or the largest).
    ``skip``: graphs whose pods are not counted (the ledger holds their share)."""
    nodes = list(nodes)
    requested, pending = _requested(pods, graph_key, skip)
    out: dict[str, float] = {}
    for profile in profiles:
        resource = resource_of(profile)
        free: list[float] = []
        for node in nodes:
            labels = node.get("metadata", {}).get("labels", {})
            if not matches(labels, profile.spec.pool.node_selector) or not _schedulable(node):
                continue
            allocatable = node.get("status", {}).get("allocatable", {})
            have = parse_quantity(allocatable.get(resource, 0))
            taken = requested.get(node["metadata"]["name"], {}).get(resource, 0.0)
            free.append(max(0.0, have - taken))
        total = float(combine(free)) if free else 0.0
        # Pods not yet bound take from their pool (no telling which node), except in the pools
        # this graph already runs on: there only bound pods count, so a graph that is placed
        # stays placed while a crowd of newcomers waits, instead of everyone moving at once.
        if combine is sum and profile.name not in placed:
            total = max(0.0, total - pending.get(profile.name, {}).get(resource, 0.0))
        out[profile.name] = total
    return out


def free_capacity(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
    placed: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """Units each pool can still give this graph: devices, or cores for CPU pools. ``placed``:
    the pools the graph runs on now."""
    return _free(profiles, nodes, pods, graph_key, _unit_resource, placed=placed)


def largest_free(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, float]:
    """Per pool, the most units free on any one of its nodes: one replica's devices (or cores)
    must all come from one node, so a TP4 replica needs a node with 4 free devices. ``skip``:
    graphs whose pods are not counted."""
    return _free(profiles, nodes, pods, graph_key, _unit_resource, max, skip=skip)


def _unit_resource(profile: HardwareProfile) -> str:
    return "cpu" if profile.spec.device_type is DeviceType.CPU else profile.spec.resource_name


def free_pods(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
    placed: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """Pods each pool's nodes can still take for this graph: allocatable ``pods`` (a node object
    always states it; the kubelet's default is 110) minus the pods bound there."""
    return _free(profiles, nodes, pods, graph_key, lambda _: "pods", placed=placed)


Free = tuple[dict[str, float], dict[str, float], dict[str, float]]  # units, pods, block


def admission_free(
    profiles: Iterable[HardwareProfile],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    graph_key: tuple[str, str],
    holders: frozenset[tuple[str, str]],
) -> Free:
    """Per pool, before the ledger's holds: the units and pod slots the Ready, schedulable
    nodes have minus what workloads outside the ledger request there (pods of other kinds, and
    of graphs that hold nothing), and the most units free on one node. The same for every
    graph without pods of its own (newcomers): an admission sweep computes it once."""
    profiles, nodes, pods = list(profiles), list(nodes), list(pods)
    return (_free(profiles, nodes, pods, graph_key, _unit_resource, skip=holders),
            _free(profiles, nodes, pods, graph_key, lambda _: "pods", skip=holders),
            largest_free(profiles, nodes, pods, graph_key))


def admission_capacity(
    free: Free,
    held_units: Mapping[str, float],
    held_pods: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, float]]:
    """Units and pod slots per pool a graph may plan into under admission: ``free``
    (``admission_free``) minus what the other admitted graphs hold (``held_*``: the ledger;
    their own pods are not counted again)."""
    units, slots, _ = free
    return ({p: max(0.0, u - held_units.get(p, 0.0)) for p, u in units.items()},
            {p: max(0.0, n - held_pods.get(p, 0.0)) for p, n in slots.items()})
