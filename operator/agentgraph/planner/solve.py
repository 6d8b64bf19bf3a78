"""plan(): graph + hardware -> Plan. The one entry point the CLI and the operator call."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import (
    Assignment,
    Constraint,
    Objective,
    Plan,
    SharedServer,
    SolveStats,
)
from agentgraph.api.plan import Transfer as TransferOut
from agentgraph.costs.base import CostSettings, Phase
from agentgraph.planner import candidates, diagnose, explain, milp
from agentgraph.planner import graph as graph_model
from agentgraph.planner.candidates import Config, Option, StepOptions
from agentgraph.planner.errors import Issue, PlanningError
from agentgraph.planner.evaluate import REL_TOL, Evaluation, Selection, evaluate
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.memo import Memo
from agentgraph.planner.snapshot import ClusterSnapshot

PHASE_ORDER = {"run": 0, "prefill": 1, "decode": 2}
# (step, phase or "run") -> (pool, tensor parallel, batch, replicas, units per replica):
# what runs now.
Placement = Mapping[tuple[str, str], tuple[str, int, int, int, float]]
KEEP_WITHIN = 0.10  # a running plan moves only when the optimum is more than 10% cheaper


def plan(
    graph: AgentGraph,
    profiles: Sequence[HardwareProfile],
    settings: CostSettings | None = None,
    capacity_units: Mapping[str, float] | None = None,
    capacity_pods: Mapping[str, float] | None = None,
    capacity_block: Mapping[str, float] | None = None,
    with_explanation: bool = False,
    time_limit: float = 60.0,
    current: Placement | None = None,
    keep_within: float = KEEP_WITHIN,
    snapshot: ClusterSnapshot | None = None,
    move_cost: float = 0.0,
    diagnose_infeasible: bool = True,
    memo: Memo[Solved] | None = None,
    with_stats: bool = False,
) -> Plan:
    """Raises PlanningError when the spec is invalid; returns ``feasible: false`` with reasons when
    it is valid but nothing meets it on this hardware.

    With ``current`` (what runs now, for the same spec), the current placement is returned
    unchanged while it still meets everything on this snapshot and the optimum is at most
    ``keep_within`` cheaper: a replan then moves nothing for a saving of a few percent, and
    near-equal optima cannot make pods flip between pools as free capacity changes.

    ``snapshot`` (the operator builds it: free capacity, measured corrections) replaces the
    capacity arguments. ``move_cost``, with ``current``: a step phase that changes pool or
    tensor parallelism is priced ``move_cost`` higher in the solve (not in the plan), so a
    replan moves only the steps for which moving pays; scaling in place costs nothing extra.
    ``diagnose_infeasible=False``: when nothing fits, skip finding out why (a second solve
    without the capacities); the reasons then only say that nothing fits. ``memo``: keep and
    reuse candidates and solver answers for inputs seen before (planner/memo.py).
    ``with_stats``: the plan carries ``solveStats`` (model sizes, where the time went)."""
    started = time.perf_counter()
    settings = settings or CostSettings()
    model = graph_model.build(graph)
    if snapshot is None:
        snapshot = ClusterSnapshot.from_profiles(profiles, settings, capacity_units,
                                                 capacity_pods, capacity_block)
    if not snapshot.pools:
        raise PlanningError([Issue("hardwareProfiles", "no HardwareProfile to plan on")])
    graph_model.check_pools(model, snapshot.names)
    sla = model.sla.latency_seconds
    penalty = move_cost if current else 0.0
    def solved(shot: ClusterSnapshot) -> Solved:
        if memo is None:
            return _solve(model, shot, settings, time_limit, current, penalty)
        key = (graph.spec.model_dump_json(), shot.pools, tuple(sorted(shot.corrections.items())),
               settings, time_limit, tuple(sorted(_running(current).items())), penalty)
        return memo.get(key, lambda: _solve(model, shot, settings, time_limit, current,
                                            penalty),
                        keep=lambda s: s[1] is None or s[1].status in ("optimal", "infeasible"))

    shortcut = _uncapped_first(model, snapshot, current, solved)
    options, found = shortcut if shortcut is not None else solved(snapshot)
    if found is None:
        return Plan(feasible=False, sla_seconds=sla, reasons=diagnose.empty_slots(model, options))
    result = found
    if result.selection is None and result.status != "infeasible":
        return Plan(feasible=False, sla_seconds=sla, solver_status=result.status,
                    solve_seconds=result.seconds,
                    reasons=[f"the solver found no plan within its time limit of {time_limit:g} s "
                             f"({result.status}); allow it more time"])
    if result.selection is None and not diagnose_infeasible:
        return Plan(feasible=False, sla_seconds=sla, solver_status=result.status,
                    solve_seconds=result.seconds,
                    reasons=["no plan meets the SLA within the capacity given"])
    if result.selection is None:
        relaxed = None
        if snapshot.capacities() and shortcut is None:  # (the shortcut: none even without)
            relaxed = milp.solve(model, options, snapshot.without_capacity(),
                                 time_limit).selection
        reasons = diagnose.infeasible(model, options, snapshot, relaxed)
        return Plan(feasible=False, sla_seconds=sla, reasons=reasons,
                    solver_status=result.status, solve_seconds=result.seconds)
    selection = result.selection
    ev = evaluate(model, options, selection, snapshot)
    solver_status = result.status
    kept = _current_selection(options, current) if current else None
    if kept is not None and kept != selection:
        ev_kept = evaluate(model, options, kept, snapshot)
        if ev_kept.feasible and ev_kept.objective <= ev.objective * (1 + keep_within):
            # Stable wording (no percentage): the status is rewritten only when it changes.
            solver_status = (f"{result.status}; kept the current placement (moving would "
                             f"save under {keep_within:.0%})")
            selection, ev = kept, ev_kept
    out = render(model, options, selection, ev, snapshot)
    out = out.model_copy(update={"solve_seconds": result.seconds,
                                 "solver_status": solver_status, "solver_gap": result.gap})
    if ev.violations:  # the solver's answer failed the exact re-check: never report it as good
        return out.model_copy(update={"feasible": False, "reasons": ev.violations})
    if with_explanation:
        out = out.model_copy(update={
            "baselines": explain.baselines(model, snapshot, settings, ev.objective, time_limit),
            "alternatives": explain.alternatives(model, options, selection, ev, snapshot),
        })
    if with_stats and result.stats is not None:
        out = out.model_copy(update={"solve_stats": _stats(result, time.perf_counter() - started)})
    return out


def _stats(result: milp.MilpResult, total: float) -> SolveStats:
    assert result.stats is not None
    seconds = {k: round(v, 4) for k, v in result.stats.seconds.items()}
    seconds["other"] = round(max(total - result.seconds, 0.0), 4)  # candidates, checks, render
    seconds["total"] = round(total, 4)
    return result.stats.model_copy(update={"seconds": seconds})


Solved = tuple[dict[str, StepOptions], milp.MilpResult | None]  # None: a slot has no option


def _solve(model: GraphModel, snapshot: ClusterSnapshot, settings: CostSettings,
           time_limit: float, current: Placement | None, penalty: float) -> Solved:
    options = candidates.build(model, snapshot, settings, running=_running(current),
                               move_cost=penalty)
    if diagnose.empty_slots(model, options):
        return options, None
    kept = _current_selection(options, current) if current else None
    return options, milp.solve(model, options, snapshot, time_limit,
                               start=None if kept is None else _configs_of(options, kept))


def _configs_of(options: Mapping[str, StepOptions],
                selection: Mapping[tuple[str, Phase], Option]) -> dict[str, Config]:
    """The configuration of each step that is ``selection`` (the running plan): the MILP's
    first incumbent when re-planning. A step whose configuration is not a candidate is left
    out (the MILP then ignores the whole start)."""
    out: dict[str, Config] = {}
    for name, so in options.items():
        parts = {phase: selection.get((name, phase)) for phase in so.slots}
        found = next((c for c in so.configs if dict(c.parts) == parts), None)
        if found is not None:
            out[name] = found
    return out


def _uncapped_first(
    model: GraphModel,
    snapshot: ClusterSnapshot,
    current: Placement | None,
    solved: Callable[[ClusterSnapshot], Solved],
) -> Solved | None:
    """Exact shortcut for a cluster with room: solve without capacity limits (no units axis in
    the pruning, so far fewer candidates). When that optimum also fits the capacities it is
    optimal with them too (their plans are a subset). When nothing is feasible without them,
    nothing is with them: that answer is returned too. None: solve with the capacities.

    With a running placement, the shortcut also needs that placement among its candidates, so
    that keeping it can still be weighed."""
    if not snapshot.capacities():
        return None
    options, result = solved(snapshot.without_capacity())
    if result is None or (result.selection is None and result.status == "infeasible"):
        # Nothing fits even without the limits, so nothing fits with them: the limited
        # model (units in every pool's Pareto pruning, far more candidates) is never built.
        return options, result
    if result.selection is None or result.status != "optimal":
        return None
    if not evaluate(model, options, result.selection, snapshot).feasible:
        return None
    if current and _current_selection(options, current) is None:
        return None
    return options, result


def _running(current: Placement | None) -> candidates.Running:
    return {slot: (where[0], where[1]) for slot, where in (current or {}).items()}


def _current_selection(
    options: Mapping[str, StepOptions], current: Placement
) -> dict[tuple[str, Phase], Option] | None:
    """The candidate options that are the current placement, or None when any slot's
    placement is no longer a candidate (step added, pool gone, rate changed its replicas)."""
    out: dict[tuple[str, Phase], Option] = {}
    for name, opts in options.items():
        for phase, slot in opts.slots.items():
            placed = current.get((name, phase))
            found = next((o for o in slot if placed is not None
                          and placed[:4] == (o.pool, o.estimate.tensor_parallel,
                                             o.estimate.batch, o.replicas)
                          and math.isclose(placed[4], o.estimate.units, rel_tol=1e-6)), None)
            if found is None:
                return None
            out[(name, phase)] = found
    return out if len(out) == len(current) else None


def render(
    model: GraphModel,
    options: Mapping[str, StepOptions],
    selection: Selection,
    ev: Evaluation,
    snapshot: ClusterSnapshot,
) -> Plan:
    rate = model.sla.target_requests_per_second
    assignments = []
    served = {(step, s.phase): s for s in ev.servers for step in s.members}
    for (name, phase), o in sorted(selection.items(),
                                   key=lambda kv: (list(options).index(kv[0][0]),
                                                   PHASE_ORDER[kv[0][1]])):
        server = served.get((name, phase))
        hourly = o.cost_per_hour if server is None else server.share(name)
        per_request = hourly / (rate * 3600) if rate and hourly else o.objective
        replicas = o.replicas if server is None else (
            server.replicas if server.lead == name else 0)
        assignments.append(Assignment(
            step=name,
            phase=None if phase == "run" else phase,
            pool=o.pool,
            tensor_parallel=o.estimate.tensor_parallel,
            batch=o.estimate.batch,
            replicas=replicas,
            units_per_replica=o.estimate.units,
            latency_seconds=o.estimate.latency,
            tbt_seconds=o.estimate.tbt,
            cost_per_hour=hourly,
            cost_per_request=per_request,
            bound=o.estimate.bound,
            server=None if server is None else server.lead,
        ))
    transfers = [
        TransferOut.model_validate({
            "step": name, "from": t.src, "to": t.dst,
            "bytesPerRequest": t.estimate.bytes,
            "latencySeconds": t.estimate.latency,
            "costPerRequest": t.estimate.cost_per_request * model.visits[name],
        })
        for name, t in ev.transfers.items()
    ]
    name = "costPerHour" if rate else "costPerRequest"
    return Plan(
        feasible=ev.feasible,
        objective=Objective(name=name, value=ev.objective),
        latency_seconds=ev.latency,
        worst_case_latency_seconds=ev.worst_latency,
        sla_seconds=model.sla.latency_seconds,
        cost_per_hour=ev.objective if rate else None,
        cost_per_request=ev.objective / (rate * 3600) if rate else ev.objective,
        assignments=assignments,
        transfers=transfers,
        servers=[SharedServer(name=s.lead, model=s.group, phase=s.phase, pool=s.pool,
                              tensor_parallel=s.tensor_parallel, batch=s.batch,
                              replicas=s.replicas, units_per_replica=s.units,
                              cost_per_hour=s.cost_per_hour, steps=list(s.members))
                 for s in ev.servers],
        critical_path=ev.critical_path,
        constraints=constraints(model, options, ev, snapshot),
        reasons=ev.violations,
    )


def constraints(
    model: GraphModel,
    options: Mapping[str, StepOptions],
    ev: Evaluation,
    snapshot: ClusterSnapshot,
) -> list[Constraint]:
    rows = [("sla.latencySeconds", model.sla.latency_seconds, ev.latency)]
    for name, so in options.items():
        if so.ttft is not None:
            rows.append((f"ttft:{name}", so.ttft, ev.ttft[name]))
        if so.tbt is not None:
            rows.append((f"tbt:{name}", so.tbt, ev.tbt[name]))
    for key, limit in snapshot.capacities().items():
        if ev.usage.get(key):
            rows.append((f"capacity:{key}", limit, ev.usage[key]))
    return [
        Constraint(name=n, limit=limit, value=value,
                   binding=value >= limit * (1 - REL_TOL) - 1e-12)
        for n, limit, value in rows
    ]
