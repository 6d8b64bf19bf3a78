"""Admission: plan a graph against the pools minus what the other admitted graphs hold, under
the ledger's lock, and record its hold before any child exists (controller/ledger.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from kubernetes import client

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import Plan
from agentgraph.api.status import Admission, PoolHold, Reason
from agentgraph.controller import render, replanning, snapshot, status
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.ledger import Hold, Key, Ledger, Waiting
from agentgraph.controller.planning import Obj, World, parse_graph, plan_for
from agentgraph.planner.errors import PlanningError

BUDGET_ANNOTATION = "agentgraph.dev/budget-per-hour"
log = logging.getLogger("agentgraph.admission")


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


def hold_from(admission: Admission) -> Hold:
    """The hold a status records (the inverse of ``admission_of``)."""
    return Hold(units={h.pool: h.units for h in admission.holds},
                pods={h.pool: h.pods for h in admission.holds},
                cost_per_hour=admission.cost_per_hour or 0.0)


def admission_of(hold: Hold | None, ledger: Ledger, key: tuple[str, str],
                 budget: float | None, position: int | None = None,
                 empty_cost: float | None = None) -> Admission:
    return Admission(
        holds=[PoolHold(pool=p, units=round(u, 4), pods=hold.pods.get(p, 0.0))
               for p, u in sorted(hold.units.items())] if hold else [],
        cost_per_hour=None if hold is None else round(hold.cost_per_hour, 4),
        queue_position=position, namespace_budget_per_hour=budget,
        namespace_spend_per_hour=round(ledger.spend(key[0]), 4),
        empty_cluster_cost_per_hour=None if empty_cost is None else round(empty_cost, 4))


class Decision(NamedTuple):
    plan: Plan
    admission: Admission  # what to show
    waiting: tuple[Reason, str] | None  # why it must wait, when it must
    # admit(): the status written on admission (None: none written); decide(): the status
    # to write before any child is created (None: the status records the hold already)
    status: dict[str, Any] | None


def admit(cluster: Cluster, graph: AgentGraph, obj: Obj, world: World,
          measured: replanning.Planning, ledger: Ledger, budgets: Mapping[str, float],
          time_limit: float, keep_within: float, move_cost: float) -> Decision:
    """``decide``, then record the hold in the status (Admitted=True) when it does not record
    it yet: before any child is created, so a restart over-commits nothing."""
    decision = decide(graph, obj, world, measured, ledger, budgets, time_limit, keep_within,
                      move_cost)
    if decision.status is not None:
        meta = obj["metadata"]
        cluster.patch_status(meta["namespace"], meta["name"], decision.status,
                             previous=obj.get("status") or {})
        ledger.persisted.add((meta["namespace"], meta["name"]))
    return decision


def decide(graph: AgentGraph, obj: Obj, world: World, measured: replanning.Planning,
           ledger: Ledger, budgets: Mapping[str, float], time_limit: float,
           keep_within: float, move_cost: float, free: snapshot.Free | None = None
           ) -> Decision:
    """Plan against the pools minus what the other admitted graphs hold, under the ledger's
    lock, and record the hold in the ledger (no call to the API server). ``free``: what
    ``snapshot.admission_free`` gives for a graph with no pods (a sweep's newcomers).

    A waiting graph whose inputs are all as they were at its last try (its spec and measured
    rate, the room left to it, its namespace's budget and spend, the profiles) is not planned
    again: the solver is deterministic, so the answer would be the same. The resync and every
    freed room retry the whole queue; this keeps that cheap."""
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    budget = budgets.get(key[0])
    created = str(meta.get("creationTimestamp") or "")
    with ledger.lock:
        if free is None or key in ledger.holds:  # its own pods may be running
            free = snapshot.admission_free(world.profiles, world.nodes, world.pods, key,
                                           ledger.holders())
        room = snapshot.admission_capacity(free, *ledger.others(key))
        block = free[2]
        mine = ledger.holds.get(key)
        signature = (meta.get("generation"), measured.rate,
                     tuple(sorted(measured.corrections.items())), budget,
                     round(ledger.spend(key[0], but=key), 9), _rounded(room[0]),
                     _rounded(room[1]), _rounded(block), mine, _versions(world))
        before = ledger.waiting.get(key)
        if before is not None and before.signature == signature and before.plan is not None:
            position = ledger.position(key)
            return Decision(before.plan, admission_of(mine, ledger, key, budget, position,
                                                      before.cost),
                            (before.reason, _message(before, position, len(ledger.waiting))),
                            None)
        ledger.waiting.pop(key, None)  # back in line below only if it still must wait
        plan = _plan_with_gateway(graph, obj, world, measured, time_limit, keep_within,
                                  move_cost, room, block)
        if not plan.feasible:
            empty = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost,
                             block=block, unbounded=True)
            if not empty.feasible:  # it fits nowhere: Infeasible, not a matter of room
                return Decision(empty, admission_of(mine, ledger, key, budget), None, None)
            why = Waiting(graph.spec.priority, created, Reason.INSUFFICIENT_CAPACITY,
                          _short(hold_of(graph, empty, world.profiles), room)
                          + ("; the plan it holds keeps running" if mine else ""),
                          empty.cost_per_hour, signature, plan)
            position = ledger.wait(key, why)
            return Decision(plan, admission_of(mine, ledger, key, budget, position, why.cost),
                            (why.reason, _message(why, position, len(ledger.waiting))), None)
        hold = hold_of(graph, plan, world.profiles)
        spend = ledger.spend(key[0], but=key) + hold.cost_per_hour
        if budget is not None and spend > budget * (1 + 1e-9):
            why = Waiting(graph.spec.priority, created, Reason.OVER_BUDGET,
                          f"namespace {key[0]}: this plan's ${hold.cost_per_hour:.4g}/hour "
                          f"would bring it to ${spend:.4g}/hour, over its budget of "
                          f"${budget:.4g}/hour ({BUDGET_ANNOTATION}) by "
                          f"${spend - budget:.4g}/hour", hold.cost_per_hour, signature,
                          plan.model_copy(update={"feasible": False}))
            position = ledger.wait(key, why)
            return Decision(plan, admission_of(mine, ledger, key, budget, position, why.cost),
                            (why.reason, _message(why, position, len(ledger.waiting))), None)
        changed = ledger.admit(key, hold)
        admission = admission_of(hold, ledger, key, budget)
    if not changed and key in ledger.persisted:
        return Decision(plan, admission, None, None)
    return Decision(plan, admission, None, status.with_admission(
        obj.get("status") or {}, admission, meta.get("generation")))


Arrival = tuple[tuple[str, str], int, str]  # (key, priority, creation time)


def sweep(cluster: Cluster, arrivals: Sequence[Arrival], bodies: Mapping[Key, Obj],
          world: World, ledger: Ledger, budgets: Mapping[str, float], time_limit: float,
          keep_within: float, move_cost: float, writers: int = 4) -> int:
    """Decide every graph that has arrived and is neither holding nor waiting, first in line
    first (priority, then creation time): admit it (its hold in the ledger and its status) or
    queue it (Admitted=False in its status). Its own reconcile then finds the decision made and
    goes on to its children. A burst of graphs is thus decided in order and in one pass, not
    one per free handler thread behind the others' child creation. ``bodies``: the graphs as
    their watch events brought them (others are read). The statuses are written after the
    lock is released, ``writers`` at a time. Returns how many were decided."""
    # (key, status, the hold it records or None when it waits, the body's resourceVersion,
    # the status it replaces)
    writes: list[tuple[Key, dict[str, Any], Hold | None, str | None, Obj]] = []
    with ledger.lock:
        # Newcomers have no pods yet: what the nodes leave them is one figure for them all.
        free = snapshot.admission_free(world.profiles, world.nodes, world.pods, ("", ""),
                                       ledger.holders())
        for key, _, _ in sorted(arrivals, key=lambda a: (-a[1], a[2], a[0])):
            if key in ledger.holds or key in ledger.waiting:
                continue
            obj = bodies.get(key) or cluster.graph(*key)
            graph = None if obj is None else parse_graph(obj)[0]
            generation = None if obj is None else obj["metadata"].get("generation")
            if key in ledger.undecidable and ledger.undecidable[key] == generation:
                continue
            if obj is None or graph is None:
                ledger.undecidable[key] = generation  # gone, or invalid: its reconcile says why
                continue
            version = obj["metadata"].get("resourceVersion")
            try:
                decision = decide(graph, obj, world,
                                  replanning.planning(graph, obj.get("status")), ledger,
                                  budgets, time_limit, keep_within, move_cost, free)
            except PlanningError:
                ledger.undecidable[key] = generation
                continue
            if decision.waiting is not None:
                writes.append((key, status.with_admission(
                    obj.get("status") or {}, decision.admission, generation,
                    waiting=decision.waiting), None, version, obj.get("status") or {}))
            elif decision.status is not None:
                writes.append((key, decision.status, ledger.holds[key], version,
                               obj.get("status") or {}))
            elif key not in ledger.holds:
                ledger.undecidable[key] = generation  # fits nowhere: Infeasible, not queued

    def write(item: tuple[Key, dict[str, Any], Hold | None, str | None, Obj]) -> None:
        """Only onto the object it was decided from (resourceVersion): a status its own
        reconcile wrote meanwhile is newer, and that reconcile records the hold itself."""
        key, new, hold, version, old = item
        with ledger.lock:  # decided again meanwhile (or released): nothing to write
            if hold is not None and ledger.holds.get(key) != hold:
                return
            if hold is None and (key in ledger.holds or key not in ledger.waiting):
                return
        try:
            cluster.patch_status(key[0], key[1], new, resource_version=version, previous=old)
        except client.ApiException as e:
            if e.status == 404:  # deleted before its decision was written
                ledger.release(key)
            elif e.status != 409:  # 409: it changed meanwhile; its reconcile writes it
                log.warning("%s/%s: could not record its admission: %s", *key, e.reason)
            return
        if hold is not None:
            with ledger.lock:
                if ledger.holds.get(key) == hold:
                    ledger.persisted.add(key)

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="admission") as pool:
        list(pool.map(write, writes))
    return len(writes)


def _versions(world: World) -> tuple[tuple[str, str], ...]:
    """Which profiles a decision saw (prices, speeds: a new version may change it)."""
    return tuple((p.name, str((p.metadata.model_extra or {}).get("resourceVersion")
                              or p.spec.model_dump_json())) for p in world.profiles)


def _rounded(values: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, round(v, 9)) for k, v in values.items()))


def _message(why: Waiting, position: int, waiting: int) -> str:
    if why.reason is Reason.OVER_BUDGET:
        return why.detail
    return (f"the shared pools have no room for it now: {why.detail}; queue position "
            f"{position} of {waiting}; with room it would cost ${why.cost or 0:.4g}/hour")


def _fits(hold: Hold, room: tuple[Mapping[str, float], Mapping[str, float]]) -> bool:
    units, pods = room
    return (all(u <= units.get(p, 0.0) + 1e-9 for p, u in hold.units.items())
            and all(n <= pods.get(p, 0.0) + 1e-9 for p, n in hold.pods.items()))


def _plan_with_gateway(graph: AgentGraph, obj: Obj, world: World,
                       measured: replanning.Planning, time_limit: float, keep_within: float,
                       move_cost: float, room: tuple[Mapping[str, float], Mapping[str, float]],
                       block: Mapping[str, float]) -> Plan:
    """The planner sizes the steps; the gateway comes on top, in the cheapest CPU pool the plan
    uses. When the plan took the room the gateway needs there, plan again with that room set
    aside, so that what is held never exceeds what is free."""
    plan = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost, room,
                    block, diagnose_infeasible=False)
    if not plan.feasible or _fits(hold_of(graph, plan, world.profiles), room):
        return plan
    pool = render.gateway_pool(plan, {p.name: p for p in world.profiles})
    if pool is None:
        return plan
    n = render.gateway_replicas(graph)
    cores = snapshot.parse_quantity(render.GATEWAY_RESOURCES["requests"]["cpu"])
    units, pods = dict(room[0]), dict(room[1])
    units[pool.name] = max(0.0, units.get(pool.name, 0.0) - n * cores)
    pods[pool.name] = max(0.0, pods.get(pool.name, 0.0) - n)
    again = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost,
                     (units, pods), block, diagnose_infeasible=False)
    if again.feasible and _fits(hold_of(graph, again, world.profiles), room):
        return again
    reason = f"no room for its gateway in {pool.name} next to its steps"
    return again.model_copy(update={"feasible": False,
                                    "reasons": [*again.reasons, reason]})


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
