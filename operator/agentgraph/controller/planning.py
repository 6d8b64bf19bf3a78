"""Snapshot, then plan, for one graph: its free capacity as the cluster (or the admission
ledger) leaves it, the replanner's corrections and rate, the running placement to keep. Reads
the operator's caches only; no API calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import validation_lines
from agentgraph.api.plan import Plan
from agentgraph.controller import replanning, snapshot, status
from agentgraph.costs.base import CostSettings
from agentgraph.planner import solve
from agentgraph.planner.memo import Memo
from agentgraph.planner.snapshot import ClusterSnapshot

Obj = Mapping[str, Any]
# Solves the operator made, for the next time it asks the same: resyncs, replanner passes and
# admission retries mostly do (planner/memo.py).
PLANS: Memo[solve.Solved] = Memo(256)


@dataclass(frozen=True)
class World:
    """The cluster as the operator's caches hold it (kopf indexes): no listing per reconcile."""

    profiles: Sequence[HardwareProfile]
    bad_profiles: Sequence[str] = ()
    nodes: Sequence[Obj] = ()
    pods: Sequence[Obj] = ()


def parse_graph(obj: Obj) -> tuple[AgentGraph | None, list[str]]:
    try:
        return AgentGraph.model_validate(
            {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj}), []
    except pydantic.ValidationError as e:
        return None, validation_lines(f"AgentGraph/{obj['metadata']['name']}", e)


def current_placement(previous: Obj, generation: int | None) -> solve.Placement | None:
    """What runs now, from the status, when it was planned for this very spec."""
    plan = previous.get("plan")
    if not plan or previous.get("observedGeneration") != generation:
        return None
    if status.condition_status(previous, "Planned") != "True":
        return None
    try:
        return {(s["step"], s.get("phase") or "run"):
                (s["pool"], int(s["tensorParallel"]), int(s["batch"]), int(s["replicas"]),
                 float(s["unitsPerReplica"]))
                for s in plan.get("steps", [])}
    except (KeyError, TypeError, ValueError):
        return None  # a status from an older operator: plan afresh


def plan_for(graph: AgentGraph, obj: Obj, world: World, measured: replanning.Planning,
             time_limit: float, keep_within: float, move_cost: float,
             room: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
             block: Mapping[str, float] | None = None, unbounded: bool = False,
             diagnose_infeasible: bool = True) -> Plan:
    """Snapshot (free capacity as this graph sees it, measured corrections), then plan, sized
    for the measured rate when that is what the replanner asks for. ``room``: units and pods
    per pool from the admission ledger, instead of the live pods; ``block``: the most units
    free on one node per pool, when the caller has it; ``unbounded``: as if the cluster were
    empty (what a waiting graph would cost); ``diagnose_infeasible``: say why when nothing
    fits (an extra solve; admission says it in its own terms)."""
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    current = current_placement(obj.get("status") or {}, meta.get("generation"))
    placed = frozenset(pool for pool, *_ in (current or {}).values())
    settings = CostSettings()
    units, pods = room if room is not None else (
        snapshot.free_capacity(world.profiles, world.nodes, world.pods, key, placed),
        snapshot.free_pods(world.profiles, world.nodes, world.pods, key, placed))
    shot = ClusterSnapshot.from_profiles(
        world.profiles, settings, capacity_units=units, capacity_pods=pods,
        capacity_block=block if block is not None else snapshot.largest_free(
            world.profiles, world.nodes, world.pods, key),
        corrections=measured.corrections)
    if unbounded:
        shot = shot.without_capacity()
    return solve.plan(sized(graph, measured.rate), world.profiles, settings, snapshot=shot,
                      time_limit=time_limit, keep_within=keep_within, current=current,
                      move_cost=move_cost, diagnose_infeasible=diagnose_infeasible,
                      memo=PLANS)


def sized(graph: AgentGraph, rate: float | None) -> AgentGraph:
    """The graph as planned at ``rate`` (the replanner's, when it differs from the spec's)."""
    if rate == graph.spec.sla.target_requests_per_second:
        return graph
    sla = graph.spec.sla.model_copy(update={"target_requests_per_second": rate})
    return graph.model_copy(update={"spec": graph.spec.model_copy(update={"sla": sla})})
