"""One level-based reconcile for create, update, resume, timers and cluster changes:
snapshot -> plan -> render -> server-side apply -> prune -> status (written only on change)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pydantic

from agentgraph.api.graph import AgentGraph
from agentgraph.api.loading import validation_lines
from agentgraph.api.plan import Plan
from agentgraph.controller import render, snapshot, status
from agentgraph.controller.cluster import Cluster, names
from agentgraph.planner import solve
from agentgraph.planner.errors import PlanningError

log = logging.getLogger("agentgraph.reconcile")


@dataclass(frozen=True)
class Outcome:
    feasible: bool
    ready: bool
    status_written: bool


def _graph(obj: dict[str, Any]) -> tuple[AgentGraph | None, list[str]]:
    try:
        return AgentGraph.model_validate(
            {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj}), []
    except pydantic.ValidationError as e:
        return None, validation_lines(f"AgentGraph/{obj['metadata']['name']}", e)


def _available(deployment: dict[str, Any]) -> bool:
    """The rollout is complete: every replica updated and available, and no old pod left
    (status.replicas counts the old ReplicaSet's pods too), as `kubectl rollout status` has it."""
    wanted = deployment.get("spec", {}).get("replicas", 0)
    st = deployment.get("status", {})
    return bool(st.get("availableReplicas", 0) == wanted
                and st.get("updatedReplicas", 0) == wanted
                and st.get("replicas", 0) == wanted
                and st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0))


def reconcile(cluster: Cluster, obj: dict[str, Any], time_limit: float = 30.0) -> Outcome:
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = obj.get("status") or {}
    graph, problems = _graph(obj)
    plan: Plan | None = None
    ready = False
    if graph is not None:
        profiles, bad_profiles = cluster.profiles()
        for line in bad_profiles:
            log.warning("skipping invalid profile: %s", line)
        capacity = snapshot.free_capacity(profiles, cluster.nodes(), cluster.pods(),
                                          (namespace, name))
        try:
            plan = solve.plan(graph, profiles, capacity_units=capacity, time_limit=time_limit)
        except PlanningError as e:
            problems = [str(i) for i in e.issues]
        if plan is not None and not plan.feasible:
            problems = list(plan.reasons)
        if plan is not None and plan.feasible:
            wanted = render.render(graph, plan, {p.name: p for p in profiles}, namespace,
                                   meta["uid"])
            applied = [cluster.apply(m) for m in wanted]
            for kind, child in sorted(names(cluster.children(namespace, name)) - names(wanted)):
                cluster.delete(kind, namespace, child)  # after the new ones exist: no gap
            ready = all(_available(d) for d in applied if d["kind"] == "Deployment")
    new = status.build(previous, meta.get("generation"), plan, problems, ready)
    written = False
    if status.changed(previous, new):
        cluster.patch_status(namespace, name, new)
        written = True
        _events(cluster, obj, previous, new, problems)
    return Outcome(feasible=not problems and plan is not None, ready=ready,
                   status_written=written)


def _condition(st: dict[str, Any], type_: str) -> str | None:
    return next((c.get("status") for c in st.get("conditions", []) if c.get("type") == type_),
                None)


def _events(cluster: Cluster, obj: dict[str, Any], previous: dict[str, Any],
            new: dict[str, Any], problems: list[str]) -> None:
    if problems and (_condition(previous, "Infeasible") != "True"
                     or previous.get("observedGeneration") != new.get("observedGeneration")):
        cluster.event(obj, "Warning", "Infeasible", "; ".join(sorted(problems)))
    elif not problems and new.get("plan") != previous.get("plan"):
        plan = new.get("plan", {})
        reason = "Planned" if "plan" not in previous else "Replanned"
        cost = plan.get("costPerHour") or plan.get("costPerRequest")
        cluster.event(obj, "Normal", reason,
                      f"{len(plan.get('steps', []))} step phases, predicted "
                      f"{plan.get('latencySeconds', 0):.3g} s of {plan.get('slaSeconds')} s, "
                      f"cost {cost:.4g}")
    if _condition(new, "Ready") == "True" and _condition(previous, "Ready") != "True":
        cluster.event(obj, "Normal", "Ready", "every step has all its replicas available")
