"""One level-based reconcile for create, update, resume, the resync loop and cluster changes.

FULL: snapshot -> plan (keeping the running placement unless it no longer fits or moving saves
      enough) -> render -> server-side apply of what differs -> prune -> status on change.
READINESS: a child's status moved. Ready is recomputed from the Deployments the status plan
      names; anything unexpected there (a child missing, replicas or pool changed by someone
      else) escalates to FULL. Pod-template drift is undone by the next FULL (the resync).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import validation_lines
from agentgraph.api.plan import Plan
from agentgraph.api.status import Admission, PlanSummary, PoolHold, Reason
from agentgraph.controller import render, replanning, snapshot, status
from agentgraph.controller.cluster import CHILD_KINDS, Cluster
from agentgraph.controller.config import ReplanConfig
from agentgraph.controller.ledger import Hold, Ledger
from agentgraph.controller.prometheus import Prometheus
from agentgraph.controller.work import Level
from agentgraph.costs.base import CostSettings
from agentgraph.planner import replan, solve
from agentgraph.planner.errors import PlanningError
from agentgraph.planner.snapshot import ClusterSnapshot

log = logging.getLogger("agentgraph.reconcile")
Obj = Mapping[str, Any]


@dataclass(frozen=True)
class World:
    """The cluster as the operator's caches hold it (kopf indexes): no listing per reconcile."""

    profiles: Sequence[HardwareProfile]
    bad_profiles: Sequence[str] = ()
    nodes: Sequence[Obj] = ()
    pods: Sequence[Obj] = ()


@dataclass(frozen=True)
class Outcome:
    feasible: bool
    ready: bool
    status_written: bool
    applied: list[str] = field(default_factory=list)  # children written ("Kind/name")
    deleted: list[str] = field(default_factory=list)
    escalate: bool = False  # READINESS found something only FULL can mend
    status: dict[str, Any] = field(default_factory=dict)  # the status as it now stands


def _graph(obj: Obj) -> tuple[AgentGraph | None, list[str]]:
    try:
        return AgentGraph.model_validate(
            {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj}), []
    except pydantic.ValidationError as e:
        return None, validation_lines(f"AgentGraph/{obj['metadata']['name']}", e)


def _available(deployment: Obj) -> bool:
    """The rollout is complete: every replica updated and available, and no old pod left
    (status.replicas counts the old ReplicaSet's pods too), as `kubectl rollout status` has it."""
    wanted = deployment.get("spec", {}).get("replicas", 0)
    st = deployment.get("status", {})
    return bool(st.get("availableReplicas", 0) == wanted
                and st.get("updatedReplicas", 0) == wanted
                and st.get("replicas", 0) == wanted
                and st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0))


def contains(live: Any, wanted: Any) -> bool:
    """Whether the live object already has every field we would apply, with our values (the
    server adds defaults; those are not ours to compare). Unequal means apply."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            contains(live[k], v) if k in live else v in ([], {}, None)  # omitempty
            for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(live, list) and len(live) == len(wanted)
                and all(contains(a, b) for a, b in zip(live, wanted, strict=True)))
    return bool(live == wanted)


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


def reconcile(cluster: Cluster, obj: Obj, world: World, level: Level = Level.FULL,
              time_limit: float = 30.0, keep_within: float = solve.KEEP_WITHIN,
              runtime: render.RuntimeSettings | None = None,
              move_cost: float = 0.0, ledger: Ledger | None = None,
              budgets: Mapping[str, float] | None = None) -> Outcome:
    """``ledger``: admit through the shared ledger (the operator always does); without it the
    graph plans on the live free capacity alone (tests of the rest). ``budgets``: $/hour per
    namespace."""
    if level is Level.READINESS:
        return _readiness(cluster, obj)
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = obj.get("status") or {}
    graph, problems = _graph(obj)
    plan: Plan | None = None
    ready = False
    written: list[str] = []
    deleted: list[str] = []
    measured: replanning.Planning | None = None
    admitted: Admission | None = None
    waiting: tuple[Reason, str] | None = None
    if graph is not None:
        for line in world.bad_profiles:
            log.warning("skipping invalid profile: %s", line)
        measured = replanning.planning(graph, previous)
        try:
            if ledger is None:
                plan = plan_for(graph, obj, world, measured, time_limit, keep_within,
                                move_cost)
            else:
                plan, admitted, waiting = _admit(cluster, graph, obj, world, measured,
                                                 ledger, budgets or {}, time_limit,
                                                 keep_within, move_cost)
        except PlanningError as e:
            problems = [str(i) for i in e.issues]
        if plan is not None and not plan.feasible and waiting is None:
            problems = list(plan.reasons)
        if plan is not None and plan.feasible and waiting is None:
            wanted = render.render(graph, plan, {p.name: p for p in world.profiles}, namespace,
                                   meta["uid"], runtime)
            live = {(c["kind"], c["metadata"]["name"]): c
                    for c in cluster.children(namespace, name)}
            applied = []
            for manifest in wanted:
                key = (manifest["kind"], manifest["metadata"]["name"])
                have = live.get(key)
                if have is not None and contains(have, manifest):
                    applied.append(have)
                    continue
                applied.append(cluster.apply(manifest))
                written.append("/".join(key))
            order = {kind: i for i, kind in enumerate(CHILD_KINDS)}
            for kind, child in sorted(set(live) - {(m["kind"], m["metadata"]["name"])
                                                   for m in wanted},
                                      key=lambda kc: (order.get(kc[0], 99), kc[1])):
                cluster.delete(kind, namespace, child)  # after the new ones exist: no gap
                deleted.append(f"{kind}/{child}")
            ready = all(_available(d) for d in applied if d["kind"] == "Deployment")
            if written or deleted:
                log.info("%s/%s: applied %s; deleted %s", namespace, name,
                         ", ".join(written) or "nothing", ", ".join(deleted) or "nothing")
    new = status.build(previous, meta.get("generation"), plan, problems, ready,
                       planned_rate=measured.rate if measured else None, admission=admitted,
                       waiting=waiting)
    changed = _write(cluster, obj, previous, new, problems)
    return Outcome(feasible=not problems and plan is not None, ready=ready,
                   status_written=changed, applied=written, deleted=deleted, status=new)


def plan_for(graph: AgentGraph, obj: Obj, world: World, measured: replanning.Planning,
             time_limit: float, keep_within: float, move_cost: float,
             room: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
             unbounded: bool = False) -> Plan:
    """Snapshot (free capacity as this graph sees it, measured corrections), then plan, sized
    for the measured rate when that is what the replanner asks for. ``room``: units and pods
    per pool from the admission ledger, instead of the live pods; ``unbounded``: as if the
    cluster were empty (what a waiting graph would cost)."""
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
        capacity_block=snapshot.largest_free(world.profiles, world.nodes, world.pods, key),
        corrections=measured.corrections)
    if unbounded:
        shot = shot.without_capacity()
    sized = graph
    if measured.rate != graph.spec.sla.target_requests_per_second:
        sla = graph.spec.sla.model_copy(update={"target_requests_per_second": measured.rate})
        sized = graph.model_copy(update={"spec": graph.spec.model_copy(update={"sla": sla})})
    return solve.plan(sized, world.profiles, settings, snapshot=shot, time_limit=time_limit,
                      keep_within=keep_within, current=current, move_cost=move_cost)


BUDGET_ANNOTATION = "agentgraph.dev/budget-per-hour"


def hold_of(graph: AgentGraph, plan: Plan, profiles: Sequence[HardwareProfile]) -> Hold:
    """What a plan takes from the pools: its replicas' units and pods, and its gateway's."""
    units: dict[str, float] = {}
    pods: dict[str, float] = {}
    for a in plan.assignments:
        units[a.pool] = units.get(a.pool, 0.0) + a.replicas * a.units_per_replica
        pods[a.pool] = pods.get(a.pool, 0.0) + a.replicas
    pool = render.gateway_pool(plan, {p.name: p for p in profiles})
    if pool is not None:
        n = render.gateway_replicas(graph)
        cores = snapshot.parse_quantity(render.GATEWAY_RESOURCES["requests"]["cpu"])
        units[pool.name] = units.get(pool.name, 0.0) + n * cores
        pods[pool.name] = pods.get(pool.name, 0.0) + n
    return Hold(units=units, pods=pods, cost_per_hour=plan.cost_per_hour or 0.0)


def _admission(hold: Hold | None, ledger: Ledger, key: tuple[str, str], budget: float | None,
               position: int | None = None, empty_cost: float | None = None) -> Admission:
    return Admission(
        holds=[PoolHold(pool=p, units=round(u, 4), pods=hold.pods.get(p, 0.0))
               for p, u in sorted(hold.units.items())] if hold else [],
        cost_per_hour=None if hold is None else round(hold.cost_per_hour, 4),
        queue_position=position, namespace_budget_per_hour=budget,
        namespace_spend_per_hour=round(ledger.spend(key[0]), 4),
        empty_cluster_cost_per_hour=None if empty_cost is None else round(empty_cost, 4))


def _admit(cluster: Cluster, graph: AgentGraph, obj: Obj, world: World,
           measured: replanning.Planning, ledger: Ledger, budgets: Mapping[str, float],
           time_limit: float, keep_within: float, move_cost: float
           ) -> tuple[Plan, Admission, tuple[Reason, str] | None]:
    """Plan against the pools minus what the other admitted graphs hold, under the ledger's
    lock, and record the hold (in the ledger, then in the status) before any child is created.
    Returns the plan, the admission to show and, when the graph must wait, why."""
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    budget = budgets.get(key[0])
    with ledger.lock:
        ledger.waiting.pop(key, None)  # back in line below only if it still must wait
        held_units, held_pods = ledger.others(key)
        room = snapshot.admission_capacity(world.profiles, world.nodes, world.pods, key,
                                           ledger.holders(), held_units, held_pods)
        plan = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost, room)
        mine = ledger.holds.get(key)
        created = str(meta.get("creationTimestamp") or "")
        if not plan.feasible:
            empty = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost,
                             unbounded=True)
            if not empty.feasible:  # it fits nowhere: Infeasible, not a matter of room
                return plan, _admission(mine, ledger, key, budget), None
            short = _short(hold_of(graph, empty, world.profiles), room)
            position = ledger.wait(key, graph.spec.priority, created, "InsufficientCapacity")
            message = (f"the shared pools have no room for it now: {short}; queue position "
                       f"{position} of {len(ledger.waiting)}; with room it would cost "
                       f"${empty.cost_per_hour or 0:.4g}/hour")
            if mine is not None:
                message += "; the plan it holds keeps running"
            return plan, _admission(mine, ledger, key, budget, position,
                                    empty.cost_per_hour), (Reason.INSUFFICIENT_CAPACITY,
                                                           message)
        hold = hold_of(graph, plan, world.profiles)
        spend = ledger.spend(key[0], but=key) + hold.cost_per_hour
        if budget is not None and spend > budget * (1 + 1e-9):
            position = ledger.wait(key, graph.spec.priority, created, "OverBudget")
            message = (f"namespace {key[0]}: this plan's ${hold.cost_per_hour:.4g}/hour would "
                       f"bring it to ${spend:.4g}/hour, over its budget of ${budget:.4g}/hour "
                       f"({BUDGET_ANNOTATION}) by ${spend - budget:.4g}/hour")
            return plan, _admission(mine, ledger, key, budget, position,
                                    hold.cost_per_hour), (Reason.OVER_BUDGET, message)
        changed = ledger.admit(key, hold)
    admission = _admission(hold, ledger, key, budget)
    if changed:  # recorded before the children exist: a restart here over-commits nothing
        early = {**(obj.get("status") or {}), "admission": status.dump_admission(admission)}
        cluster.patch_status(key[0], key[1], early)
    return plan, admission, None


def _short(need: Hold, room: tuple[Mapping[str, float], Mapping[str, float]]) -> str:
    """Which pools run out, and by how much, for the plan it would have with room."""
    units, pods = room
    out = []
    for pool, amount in sorted(need.units.items()):
        free = units.get(pool, 0.0)
        if amount > free + 1e-9:
            out.append(f"{pool} needs {amount:.4g} units, {free:.4g} free")
    for pool, amount in sorted(need.pods.items()):
        free = pods.get(pool, 0.0)
        if amount > free + 1e-9:
            out.append(f"{pool} needs {amount:.0f} pod slots, {free:.0f} free")
    return "; ".join(out) or "the pools it needs are held by other graphs"


def recommend(obj: Obj, world: World, learned: replan.Learned, time_limit: float,
              keep_within: float, move_cost: float) -> tuple[PlanSummary | None, float | None]:
    """Advisory mode: the plan the measurements call for, and what it saves per hour against
    the running one (negative: it costs more, to meet the SLA). Nothing is applied."""
    graph, _ = _graph(obj)
    if graph is None:
        return None, None
    measured = replanning.Planning(dict(learned.corrections), replan.planning_rate(
        learned, graph.spec.sla.target_requests_per_second))
    try:
        plan = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost)
    except PlanningError:
        return None, None
    if not plan.feasible:
        return None, None
    running = status.parse(obj.get("status")).plan
    saving = None
    if running is not None and running.cost_per_hour is not None and plan.cost_per_hour:
        saving = round(running.cost_per_hour - plan.cost_per_hour, 4)
    return status.summary(plan, measured.rate), saving


def measure(cluster: Cluster, obj: Obj, world: Callable[[], World], prometheus: Prometheus | None,
            config: ReplanConfig, now: float, time_limit: float = 30.0,
            keep_within: float = solve.KEEP_WITHIN) -> replanning.PassOutcome | None:
    """A replanner pass: measure, decide, write status and events. Whether a FULL reconcile
    should follow is in the outcome (``replan``). None: nothing to measure (no plan yet, or
    an invalid spec). ``world`` is read only in advisory mode, to plan a recommendation."""
    graph, _ = _graph(obj)
    previous = obj.get("status") or {}
    if graph is None or status.condition_status(previous, "Planned") != "True":
        return None

    def advise(learned: replan.Learned) -> tuple[PlanSummary | None, float | None]:
        return recommend(obj, world(), learned, time_limit, keep_within, config.move_cost)

    outcome = replanning.run_pass(graph, obj, prometheus, config.window_seconds,
                                  config.settings(), now, advise)
    if outcome.written:
        meta = obj["metadata"]
        cluster.patch_status(meta["namespace"], meta["name"], outcome.status)
        _measure_events(cluster, obj, previous, outcome)
    return outcome


def _measure_events(cluster: Cluster, obj: Obj, previous: Obj,
                    outcome: replanning.PassOutcome) -> None:
    new = outcome.status
    was = status.condition_status(previous, "MetricsUnavailable")
    now_ = status.condition_status(new, "MetricsUnavailable")
    if now_ == "True" and was != "True":
        message = next((c.get("message", "") for c in new.get("conditions", [])
                        if c.get("type") == "MetricsUnavailable"), "")
        cluster.event(obj, "Warning", "MetricsUnavailable", message)
    elif now_ == "False" and was == "True":
        cluster.event(obj, "Normal", "MetricsAvailable", "measurements are fresh again")
    if (status.condition_status(new, "SLAMet") == "False"
            and status.condition_status(previous, "SLAMet") != "False"):
        message = next((c.get("message", "") for c in new.get("conditions", [])
                        if c.get("type") == "SLAMet"), "")
        cluster.event(obj, "Warning", "SLAMissed", message)
    old_decision = (previous.get("replan") or {}).get("lastChangeTime")
    replan_ = new.get("replan") or {}
    if replan_.get("lastChangeTime") != old_decision and replan_.get("lastChangeTime"):
        verb = "Recommended" if replan_.get("mode") == "advisory" else "Learned"
        cluster.event(obj, "Normal", verb, str(replan_.get("decision", ""))[:1000])


def _readiness(cluster: Cluster, obj: Obj) -> Outcome:
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = obj.get("status") or {}
    plan = previous.get("plan")
    if (not plan or previous.get("observedGeneration") != meta.get("generation")
            or status.condition_status(previous, "Planned") != "True"):
        return Outcome(feasible=False, ready=False, status_written=False, escalate=True)
    deployments = {c["metadata"]["name"]: c
                   for c in cluster.children(namespace, name, ("Deployment",))}
    for step in plan.get("steps", []):
        d = deployments.get(render.object_name(name, step["step"], step.get("phase")))
        if d is None or not _as_planned(d, step):
            return Outcome(feasible=True, ready=False, status_written=False, escalate=True)
    ready = all(_available(d) for d in deployments.values())
    new = status.with_ready(previous, ready)
    changed = _write(cluster, obj, previous, new, [])
    return Outcome(feasible=True, ready=ready, status_written=changed, status=new)


def _as_planned(deployment: Obj, step: Obj) -> bool:
    spec = deployment.get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    return bool(spec.get("replicas") == step.get("replicas")
                and labels.get(render.LABEL_POOL) == step.get("pool"))


def _write(cluster: Cluster, obj: Obj, previous: Obj, new: dict[str, Any],
           problems: Iterable[str]) -> bool:
    if not status.changed(previous, new):
        return False
    meta = obj["metadata"]
    cluster.patch_status(meta["namespace"], meta["name"], new)
    _events(cluster, obj, previous, new, list(problems))
    return True


def _placed(st: Obj) -> Any:
    """The placement a status reports, without the solver's wording."""
    plan = st.get("plan")
    return None if plan is None else (plan.get("steps"), plan.get("slaSeconds"))


def moves(before: Obj, after: Obj) -> list[str]:
    """Per step phase whose placement changed: 'reason/decode: b200 TP2 x1 -> h200 TP1 x2'."""

    def placed(plan: Obj) -> dict[str, str]:
        return {s["step"] + (f"/{s['phase']}" if s.get("phase") else ""):
                f"{s['pool']} TP{s.get('tensorParallel', 1)} x{s['replicas']}"
                for s in plan.get("steps", [])}

    old, new = placed(before), placed(after)
    return [f"{k}: {old.get(k, 'none')} -> {new.get(k, 'none')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _events(cluster: Cluster, obj: Obj, previous: Obj, new: Obj, problems: list[str]) -> None:
    if problems and (status.condition_status(previous, "Infeasible") != "True"
                     or previous.get("observedGeneration") != new.get("observedGeneration")):
        cluster.event(obj, "Warning", "Infeasible", "; ".join(sorted(problems)))
    elif not problems and _placed(new) != _placed(previous):
        plan = new.get("plan", {})
        reason = "Planned" if "plan" not in previous else "Replanned"
        cost = plan.get("costPerHour") or plan.get("costPerRequest")
        moved = moves(previous.get("plan", {}), plan) if "plan" in previous else []
        cluster.event(obj, "Normal", reason,
                      f"{len(plan.get('steps', []))} step phases, predicted "
                      f"{plan.get('latencySeconds', 0):.3g} s of {plan.get('slaSeconds')} s, "
                      f"cost {cost:.4g}" + (f"; moved {'; '.join(moved)}" if moved else ""))
        if moved:
            log.info("%s/%s: replanned: %s", obj["metadata"]["namespace"],
                     obj["metadata"]["name"], "; ".join(moved))
    if (status.condition_status(new, "Ready") == "True"
            and status.condition_status(previous, "Ready") != "True"):
        cluster.event(obj, "Normal", "Ready", "every step has all its replicas available")
