"""The exact optimiser when steps share model servers (``planner/sharing.py``), on HiGHS.

A shared step's cost is its servers', so it has no configurations of its own: the MILP picks
each of its phases, and the servers, itself. Per graph, besides the configuration columns of
the steps that share nothing (as in ``milp``):

Variables (for a step s of a group G)
  w[s,o]        binary, s runs phase o.phase as option o (a pool, TP and batch); one per phase
  z[s,a,b]      binary, s's prefill is on pool a and its decode on pool b (the KV transfer)
  y[G,ph,p,k]   binary, G's server for phase ph on pool p runs (TP, batch) k
  n[G,ph,p,k]   whole number, that server's replicas
Rows
  sum_a,b z = 1; sum_b z[s,a,b] = sum of w on pool a (prefill), likewise for b (decode)
  w[s,o] <= y[G,ph,p,k]                      a member runs at its server's (TP, batch)
  sum_k y[G,ph,p,k] <= 1                      one server per group, phase and pool
  sum_s load(s,o) / max utilisation * w <= n  replicas for the summed load (n >= y too)
  duration(s) = sum latency * w + sum KV latency * z, in the SLA rows (``lp.timing``)
  TTFT: prefill + KV + one decode token, per step; capacity: units * n per pool
The objective: the servers' replicas at their hourly price, the transfers, and the other steps'
configurations. Before solving, options slower than the room the SLA leaves a step (every
other step at its fastest) are dropped, as ``bounds`` does for configurations. For one graph,
a first plan (``shared_start``) and the LP's reduced costs fix whole-number columns no cheaper
plan uses; HiGHS then solves the rest alone (our branch and bound assumes costs per step).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from agentgraph.api.plan import SolveStats
from agentgraph.costs.base import Phase
from agentgraph.planner import bounds, lp, shared_start, sharing
from agentgraph.planner.candidates import Config, Option, StepOptions
from agentgraph.planner.evaluate import Selection
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import PODS, ClusterSnapshot

INF = np.inf
MIP_REL_GAP = 1e-4  # as milp's: the README's 'optimal'
SLACK_TOL = 1e-9
FIX_TOL = 1e-7  # as milp's: reduced-cost fixing keeps a column within this of the gap


@dataclass(frozen=True)
class Answer:
    selections: list[Selection] | None  # one per graph; None: no plan
    status: str
    variables: int
    rows: int
    gap: float | None
    stats: SolveStats


@dataclass
class _Columns:
    """One graph's columns: configurations of unshared steps, options of shared ones."""

    configs: dict[str, list[tuple[int, Config]]]
    options: dict[tuple[str, Phase], list[tuple[int, Option]]]


ServerKey = tuple[int, str, Phase, str, int, int]  # graph, group, phase, pool, TP, batch


def solve(graphs: Sequence[tuple[GraphModel, Mapping[str, StepOptions]]],
          snapshot: ClusterSnapshot, time_limit: float) -> Answer:
    started = time.perf_counter()
    b = lp.Builder()
    scale = max([c.objective for _, options in graphs for so in options.values()
                 for c in so.configs]
                + [o.objective for _, options in graphs for so in options.values()
                   for slot in so.slots.values() for o in slot], default=1.0) or 1.0
    pool_use: dict[str, dict[int, float]] = {}
    servers: dict[ServerKey, list[tuple[int, float]]] = {}
    price: dict[ServerKey, tuple[float, float]] = {}  # $ per replica-hour, units per replica
    columns: list[_Columns] = []
    total = 0
    for index, (graph, options) in enumerate(graphs):
        group_of = graph.group_of
        room = bounds.latency_caps(graph, _fastest(options, group_of))
        mine = _Columns({}, {})
        duration: dict[str, dict[int, float]] = {}
        sla = graph.sla.latency_seconds
        rate = graph.sla.target_requests_per_second
        for name, so in options.items():
            cap = room[name] * (1 + SLACK_TOL) + 1e-12
            if name not in group_of:
                total += len(so.configs)
                cols = [(b.var(c.objective / scale, binary=True), c) for c in so.configs
                        if c.latency <= cap]
                mine.configs[name] = cols
                for col, c in cols:
                    for key, units in c.usage:
                        pool_use.setdefault(key, {})[col] = units
                b.row({col: 1.0 for col, _ in cols}, 1.0, 1.0)
                duration[name] = {col: c.latency / sla for col, c in cols}
                continue
            assert rate is not None  # groups exist only with a request rate
            total += sum(len(slot) for slot in so.slots.values()) + len(so.transfers)
            duration[name] = _shared_step(b, name, so, cap, mine, scale, sla)
            util = graph.planning.max_utilisation
            for phase in ("prefill", "decode"):
                for col, o in mine.options[(name, phase)]:
                    at: ServerKey = (index, group_of[name], phase, o.pool,
                                     o.estimate.tensor_parallel, o.estimate.batch)
                    servers.setdefault(at, []).append(
                        (col, sharing.load(o, rate, graph.visits[name]) / util))
                    price[at] = (sharing.replica_hour(o), o.estimate.units)
        lp.timing(b, graph, duration)
        columns.append(mine)
    one_per_pool: dict[tuple[int, str, Phase, str], list[int]] = {}
    for at, members in servers.items():
        hourly, units = price[at]
        y = b.var(0.0, binary=True)
        n = b.var(hourly / scale, integer=True)
        for w, _ in members:
            b.row({w: 1.0, y: -1.0}, -INF, 0.0)
        b.row({**{w: load for w, load in members}, n: -1.0}, -INF, sharing.ROUNDING)
        b.row({n: 1.0, y: -1.0}, 0.0, INF)
        one_per_pool.setdefault(at[:4], []).append(y)
        pool = at[3]
        pool_use.setdefault(pool, {})[n] = units
        pool_use.setdefault(pool + PODS, {})[n] = 1.0
    for ys in one_per_pool.values():
        if len(ys) > 1:
            b.row(dict.fromkeys(ys, 1.0), -INF, 1.0)
    limits = {key: limit for key, limit in snapshot.capacities().items() if key in pool_use}
    for key, limit in limits.items():
        b.row(pool_use[key], -INF, limit)
    seconds = {"build": time.perf_counter() - started}
    kept = sum(len(c) for g in columns for c in g.configs.values()) + sum(
        len(c) for g in columns for c in g.options.values())
    upper = np.array(b.upper)
    start: tuple[Selection, float] | None = None
    lp_bound = None
    if len(graphs) == 1:  # (a first plan for several graphs would need their capacity jointly)
        t = time.perf_counter()
        relaxed = _relaxation(b, time_limit)
        seconds["lp"] = time.perf_counter() - t
        if relaxed == "infeasible":  # no fractional plan, so no plan
            return Answer(None, "infeasible", len(b.cost), len(b.rows), None, SolveStats(
                configurations=total, after_bounds=kept, after_fixing=kept, steps_fixed=0,
                rows=len(b.rows), start_from="none", nodes=0, seconds=seconds))
        t = time.perf_counter()
        if isinstance(relaxed, tuple):
            x_lp, reduced, lp_bound = relaxed
            start = _start(graphs[0], columns[0], x_lp, snapshot, scale)
            if start is not None:  # reduced-cost fixing, as milp's
                slack = start[1] - lp_bound + FIX_TOL * max(1.0, abs(start[1]))
                # Only whole-number columns: a used one is at least 1, which the argument needs
                # (a finish time may be used at any small value).
                upper[(reduced > slack) & np.array(b.integer, dtype=bool)] = 0.0
        seconds["start"] = time.perf_counter() - t
    t = time.perf_counter()
    x, code, value, bound, nodes = _run(b, upper, max(time_limit - (t - started), 1e-6))
    seconds["milp"] = time.perf_counter() - t
    left = sum(upper[col] > 0 for g in columns for configs in g.configs.values()
               for col, _ in configs) + sum(upper[col] > 0 for g in columns
                                            for picks in g.options.values() for col, _ in picks)
    stats = SolveStats(configurations=total, after_bounds=kept, after_fixing=int(left),
                       steps_fixed=0, rows=len(b.rows),
                       lp_bound=None if lp_bound is None else lp_bound * scale,
                       start=None if start is None else start[1] * scale,
                       start_from="none" if start is None else "heuristic", nodes=nodes,
                       seconds=seconds)
    if start is not None:
        # A plan the fixing removed costs at least the first plan's value (within FIX_TOL).
        bound = min(bound, start[1] * (1 - FIX_TOL))
        if x is None or value >= start[1]:
            return Answer([start[0]], _status(start[1], bound), len(b.cost), len(b.rows),
                          _gap(start[1], bound), stats)
    if x is None:
        status = "infeasible" if code == "infeasible" else "no solution (time limit)"
        return Answer(None, status, len(b.cost), len(b.rows), None, stats)
    selections: list[Selection] = []
    for mine in columns:
        chosen: dict[tuple[str, Phase], Option] = {}
        for name, configs in mine.configs.items():
            config = max(configs, key=lambda cc: x[cc[0]])[1]
            chosen.update({(name, phase): o for phase, o in config.parts})
        for slot, picks in mine.options.items():
            chosen[slot] = max(picks, key=lambda oc: x[oc[0]])[1]
        selections.append(chosen)
    return Answer(selections, _status(value, bound), len(b.cost), len(b.rows),
                  _gap(value, bound), stats)


def _gap(value: float, bound: float) -> float | None:
    if not np.isfinite(bound):
        return None
    return max((value - bound) / max(abs(value), 1e-12), 0.0)


def _status(value: float, bound: float) -> str:
    gap = _gap(value, bound)
    if gap is not None and gap <= MIP_REL_GAP * (1 + 1e-9):
        return "optimal"
    return "time limit" + ("" if gap is None else f": within {gap:.3%} of the lower bound")


def _start(problem: tuple[GraphModel, Mapping[str, StepOptions]], mine: _Columns,
           x: np.ndarray, snapshot: ClusterSnapshot, scale: float
           ) -> tuple[Selection, float] | None:
    """The heuristic's first plan and its value in the MILP's (scaled) objective."""
    graph, options = problem
    pick = shared_start.first_plan(graph, options, mine.configs, mine.options, x, snapshot)
    if pick is None:
        return None
    value = shared_start.milp_value(graph, options, mine.configs, mine.options, pick)
    return None if value is None else (pick, value / scale)


def _relaxation(b: lp.Builder, time_limit: float
                ) -> tuple[np.ndarray, np.ndarray, float] | str | None:
    """The LP relaxation: its solution, reduced costs and objective; "infeasible"; or None
    without an optimum in time."""
    h = lp.quiet_highs()
    h.setOptionValue("time_limit", float(time_limit))
    h.passModel(lp.highs_lp(b))
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return "infeasible"
    if status != highspy.HighsModelStatus.kOptimal:
        return None
    solution = h.getSolution()
    return (np.array(solution.col_value), np.array(solution.col_dual),
            float(h.getInfo().objective_function_value))


def _fastest(options: Mapping[str, StepOptions], group_of: Mapping[str, str]
             ) -> dict[str, float]:
    """Each step's shortest possible duration (a lower bound for a shared step: its fastest
    prefill, transfer and decode, each alone). Infinite where it has no way to run."""
    out = {}
    for name, so in options.items():
        if name not in group_of:
            out[name] = min((c.latency for c in so.configs), default=INF)
            continue
        out[name] = (min((o.estimate.latency for o in so.slots["prefill"]), default=INF)
                     + min((t.estimate.latency for t in so.transfers.values()), default=INF)
                     + min((o.estimate.latency for o in so.slots["decode"]), default=INF))
    return out


def _shared_step(b: lp.Builder, name: str, so: StepOptions, cap: float, mine: _Columns,
                 scale: float, sla: float) -> dict[int, float]:
    """A shared step's option and transfer columns and rows; returns its duration (SLA units)."""
    pre_all, dec_all = so.slots["prefill"], so.slots["decode"]
    kv_min = min((t.estimate.latency for t in so.transfers.values()), default=INF)
    pre_min = min((o.estimate.latency for o in pre_all), default=INF)
    dec_min = min((o.estimate.latency for o in dec_all), default=INF)
    tbt_min = min((o.estimate.tbt or 0.0 for o in dec_all), default=INF)
    ttft = INF if so.ttft is None else so.ttft * (1 + SLACK_TOL) + 1e-12
    pre = [(b.var(0.0, binary=True), o) for o in pre_all
           if o.estimate.latency + kv_min + dec_min <= cap
           and o.estimate.latency + kv_min + tbt_min <= ttft]
    dec = [(b.var(0.0, binary=True), o) for o in dec_all
           if pre_min + kv_min + o.estimate.latency <= cap]
    kv = [(b.var(t.objective / scale, binary=True), t) for t in so.transfers.values()]
    mine.options[(name, "prefill")] = pre
    mine.options[(name, "decode")] = dec
    for cols in (pre, dec, kv):
        b.row({col: 1.0 for col, _ in cols}, 1.0, 1.0)
    for pool in {o.pool for _, o in pre} | {t.src for _, t in kv}:
        b.row({**{col: 1.0 for col, t in kv if t.src == pool},
               **{col: -1.0 for col, o in pre if o.pool == pool}}, 0.0, 0.0)
    for pool in {o.pool for _, o in dec} | {t.dst for _, t in kv}:
        b.row({**{col: 1.0 for col, t in kv if t.dst == pool},
               **{col: -1.0 for col, o in dec if o.pool == pool}}, 0.0, 0.0)
    if so.ttft is not None:
        b.row({**{col: o.estimate.latency for col, o in pre},
               **{col: t.estimate.latency for col, t in kv},
               **{col: o.estimate.tbt or 0.0 for col, o in dec}}, -INF, so.ttft)
    return {**{col: o.estimate.latency / sla for col, o in pre},
            **{col: t.estimate.latency / sla for col, t in kv},
            **{col: o.estimate.latency / sla for col, o in dec}}


def _run(b: lp.Builder, upper: np.ndarray, time_limit: float
         ) -> tuple[np.ndarray | None, str, float, float, int]:
    """HiGHS on the model with these column bounds: its best solution (None: none), "optimal",
    "infeasible" or "limit", the solution's objective and the proven bound (scaled), nodes."""
    h = lp.quiet_highs()
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
    model = lp.highs_lp(b)
    model.col_upper_ = lp.infinite(upper)
    model.integrality_ = [highspy.HighsVarType.kInteger if i else
                          highspy.HighsVarType.kContinuous for i in b.integer]
    h.passModel(model)
    h.run()
    info = h.getInfo()
    status = h.getModelStatus()
    nodes = int(info.mip_node_count)
    # (The objective is bounded below: 'unbounded or infeasible' is infeasible.)
    if status in (highspy.HighsModelStatus.kInfeasible,
                  highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return None, "infeasible", INF, INF, nodes
    if info.primal_solution_status != 2:
        return None, "limit", INF, -INF, nodes
    x = np.array(h.getSolution().col_value)
    value = float(np.array(b.cost) @ x)
    bound = float(info.mip_dual_bound)
    if status == highspy.HighsModelStatus.kOptimal:
        bound = max(bound, value * (1 - MIP_REL_GAP))
    return x, "optimal" if status == highspy.HighsModelStatus.kOptimal else "limit", value, \
        bound if np.isfinite(bound) else -INF, nodes
