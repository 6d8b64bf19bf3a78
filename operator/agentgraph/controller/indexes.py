"""The operator's caches: kopf indexes of AgentGraphs, the holds their statuses record,
namespaces' budgets, Nodes, Pods and HardwareProfiles, and copies of them taken on the event
loop. Index functions keep only what the planner reads: memory stays small at thousands of pods.
They are coroutines, so kopf runs them on its event loop and not in the handler threads: a burst
of work in those threads never holds back what the caches see.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import kopf

from agentgraph.api import GROUP, VERSION
from agentgraph.api.naming import LABEL_GRAPH, LABEL_POOL, MANAGED_BY, object_name
from agentgraph.controller import snapshot
from agentgraph.controller.admission import BUDGET_ANNOTATION, hold_from
from agentgraph.controller.ledger import Hold
from agentgraph.controller.planning import World
from agentgraph.controller.profiles import validated
from agentgraph.controller.readiness import Readiness, available
from agentgraph.controller.state import STATE
from agentgraph.controller.status import condition_status
from agentgraph.controller.status import parse as parse_status

log = logging.getLogger("agentgraph.operator")
INDEXES = ("graphs", "nodes", "pods", "profiles", "holds", "budgets", "placed", "deployments",
           "arrivals")
NO_WORLD = World(profiles=())
T = TypeVar("T")


def namespaced(namespace: str | None) -> str:
    if namespace is None:  # AgentGraphs, Pods and Deployments are all namespaced
        raise kopf.PermanentError("a namespaced object arrived without a namespace")
    return namespace


@kopf.index(GROUP, VERSION, "agentgraphs")
async def graphs(namespace: str | None, name: str, status: kopf.Status,
           **_: Any) -> dict[tuple[str, str], frozenset[str] | None]:
    """Each graph and the pools its running plan uses (None while it has no plan)."""
    namespace = namespaced(namespace)
    planned = condition_status(status, "Planned") == "True"
    pools = status.get("plan", {}).get("pools")
    return {(namespace, name): frozenset(pools.split(",")) if planned and pools else None}


@kopf.index(GROUP, VERSION, "agentgraphs")
async def placed(namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
           **_: Any) -> dict[tuple[str, str], Readiness]:
    """What a child's status change is checked against without a call to the API server: the
    graph's shown readiness and the Deployments its current plan names (replicas, pool)."""
    namespace = namespaced(namespace)
    current = (status.get("observedGeneration") == meta.get("generation")
               and condition_status(status, "Planned") == "True")
    steps = status.get("plan", {}).get("steps") or [] if current else []
    return {(namespace, name): Readiness(
        current=current, ready=condition_status(status, "Ready") == "True",
        steps=frozenset((object_name(name, s.get("step", ""), s.get("phase")),
                         s.get("replicas"), s.get("pool")) for s in steps
                        # a step on another step's shared server has no Deployment of its own
                        if s.get("server") in (None, s.get("step"))))}


@kopf.index("apps", "v1", "deployments", labels=MANAGED_BY)
async def deployments(namespace: str | None, labels: kopf.Labels, body: kopf.Body,
                **_: Any) -> dict[tuple[str, str], tuple[str, Any, Any, bool]]:
    """Our Deployments per graph: (name, replicas, pool, rollout complete)."""
    graph = labels.get(LABEL_GRAPH)
    if not graph:
        return {}
    spec = body.get("spec", {})
    pool = spec.get("template", {}).get("metadata", {}).get("labels", {}).get(LABEL_POOL)
    return {(namespaced(namespace), graph): (body["metadata"]["name"], spec.get("replicas"),
                                             pool, available(body))}


@kopf.index(GROUP, VERSION, "agentgraphs")
async def arrivals(namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta,
             **_: Any) -> dict[tuple[str, str], tuple[int, str]]:
    """Each graph's place in the admission order: its priority and creation time."""
    priority = spec.get("priority", 0)
    return {(namespaced(namespace), name): (priority if isinstance(priority, int) else 0,
                                            str(meta.get("creationTimestamp") or ""))}


@kopf.index(GROUP, VERSION, "agentgraphs")
async def holds(namespace: str | None, name: str, status: kopf.Status,
          **_: Any) -> dict[tuple[str, str], Hold]:
    """What each graph's status says it holds (written before its children, so a hold whose
    reconcile never finished counts too): the ledger is seeded from these when this operator
    starts leading (then the ledger, written first, is the truth)."""
    namespace = namespaced(namespace)
    admission = parse_status(status).admission
    if admission is None or not admission.holds:
        return {}
    got = hold_from(admission)
    return {(namespace, name): got}


@kopf.index("", "v1", "namespaces")
async def budgets(name: str, annotations: kopf.Annotations, **_: Any) -> dict[str, float]:
    """Namespaces with a $/hour budget for their graphs (agentgraph.dev/budget-per-hour)."""
    raw = annotations.get(BUDGET_ANNOTATION)
    if raw is None:
        return {}
    try:
        value = float(raw)
    except ValueError:
        log.warning("namespace %s: %s=%r is not a number; no budget applies", name,
                    BUDGET_ANNOTATION, raw)
        return {}
    return {name: value} if value >= 0 else {}


@kopf.index("", "v1", "nodes")
async def nodes(name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status,
          **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {"metadata": {"name": name, "labels": dict(labels)},
                   "spec": {"unschedulable": bool(spec.get("unschedulable"))},
                   "status": {"allocatable": dict(status.get("allocatable", {})),
                              "conditions": [dict(c) for c in status.get("conditions", [])
                                             if c.get("type") == "Ready"]}}}


@kopf.index("", "v1", "pods")
async def pods(namespace: str | None, name: str, body: kopf.Body,
         **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods that hold resources on a node (snapshot.pod_entry). A namespaced operator watches
    only its namespaces here and reads every pod from a PodWatch instead (world())."""
    entry = snapshot.pod_entry(body)
    return {(namespaced(namespace), name): entry} if entry else {}


@kopf.index(GROUP, VERSION, "hardwareprofiles")
async def profiles(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}}


def _values(index: Mapping[Any, Any]) -> list[Any]:
    return [value for store in index.values() for value in store]


async def _copy(kwargs: Mapping[str, Any], *names: str) -> list[list[Any]]:
    """Runs on the event loop, where kopf writes its indexes: a consistent copy."""
    return [_values(kwargs[name]) for name in names]


def _on_loop(copy: Coroutine[Any, Any, T]) -> T:
    """Run ``copy`` on the event loop, where kopf writes its indexes, from a handler's worker
    thread (never call it on the loop itself)."""
    assert STATE.loop is not None
    return asyncio.run_coroutine_threadsafe(copy, STATE.loop).result(timeout=60)


def read(kwargs: Mapping[str, Any], *names: str) -> list[list[Any]]:
    """The indexes ``names``: each a list of its values."""
    return _on_loop(_copy(kwargs, *names))


def world(kwargs: Mapping[str, Any]) -> World:
    if STATE.pod_watch is not None:  # a namespaced operator: the index sees only its own
        raw_profiles, node_list = read(kwargs, "profiles", "nodes")
        pod_list = STATE.pod_watch.values()
    else:
        raw_profiles, node_list, pod_list = read(kwargs, "profiles", "nodes", "pods")
    good, bad = validated(raw_profiles)
    return World(profiles=good, bad_profiles=bad, nodes=node_list, pods=pod_list)


async def _copy_keyed(kwargs: Mapping[str, Any], name: str) -> dict[Any, Any]:
    return {key: value for key, store in kwargs[name].items() for value in store}


def keyed(kwargs: Mapping[str, Any], name: str) -> dict[Any, Any]:
    """Index ``name`` as key -> value."""
    return _on_loop(_copy_keyed(kwargs, name))



