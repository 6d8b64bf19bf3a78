"""The exact optimiser: one configuration per step, minimum objective, on HiGHS.

A configuration fixes everything about a step: for an LLM step its prefill option, its decode
option and the KV transfer between their pools (TTFT already checked when they were combined).
The MILP then only has to pick one configuration per step against the graph-wide limits:

Variables
  x[c]   binary, configuration c of its step is chosen; exactly one per step
  F[b]   finish time of block b; f[s] finish of step s inside its loop's body; L[l] the body's
         length. Times are in units of the SLA so every row is O(1).
Rows
  F[b] >= F[p] + D[b]           for every block edge p -> b (D: step duration, or E * L[l])
  F[b] <= 1                     for every sink block (the end-to-end SLA)
  sum units * x <= capacity     per pool that has a known size
Replica counts are integers fixed by each option (ceil(rate / (throughput * max utilisation))),
so capacity and cost stay linear in x. Before solving, ``bounds`` drops configurations no
feasible plan can use and fixes steps whose cheapest configuration is always safe.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from agentgraph.planner import bounds
from agentgraph.planner.candidates import Config, StepOptions
from agentgraph.planner.evaluate import Selection
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot

INF = np.inf
MIP_REL_GAP = 1e-4  # 'optimal': no plan is more than 0.01% cheaper (the README says so)
SLACK_TOL = 1e-9  # keep configurations that meet the SLA only up to rounding


@dataclass(frozen=True)
class MilpResult:
    selection: Selection | None  # None: infeasible (or no answer in time)
    status: str
    seconds: float
    variables: int
    rows: int


class _Builder:
    def __init__(self) -> None:
        self.cost: list[float] = []
        self.integer: list[int] = []
        self.upper: list[float] = []
        self.rows: list[dict[int, float]] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def var(self, cost: float = 0.0, binary: bool = False) -> int:
        self.cost.append(cost)
        self.integer.append(1 if binary else 0)
        self.upper.append(1.0 if binary else INF)
        return len(self.cost) - 1

    def row(self, coefs: Mapping[int, float], lo: float, hi: float) -> None:
        self.rows.append(dict(coefs))
        self.lo.append(lo)
        self.hi.append(hi)


def solve(
    graph: GraphModel,
    options: Mapping[str, StepOptions],
    snapshot: ClusterSnapshot,
    time_limit: float = 60.0,
) -> MilpResult:
    joint = solve_joint([(graph, options)], snapshot, time_limit)
    return MilpResult(None if joint.selections is None else joint.selections[0], joint.status,
                      joint.seconds, joint.variables, joint.rows)


@dataclass(frozen=True)
class JointResult:
    selections: Sequence[Selection] | None  # one per graph, in order; None: no plan for them all
    status: str
    seconds: float
    variables: int
    rows: int


def solve_joint(
    graphs: Sequence[tuple[GraphModel, Mapping[str, StepOptions]]],
    snapshot: ClusterSnapshot,
    time_limit: float = 60.0,
) -> JointResult:
    """Several graphs on the same pools, in one MILP: each graph its own configuration rows and
    its own SLA rows, the pools' capacity rows summed over all of them; the objective is the
    sum of their objectives (all $/hour, or all $/request). One graph is ``solve``."""
    started = time.perf_counter()
    b = _Builder()
    scale = max((c.objective for _, options in graphs for so in options.values()
                 for c in so.configs), default=1.0) or 1.0
    chosen_from: list[dict[str, list[tuple[int, Config]]]] = []
    pool_use: dict[str, dict[int, float]] = {}
    for graph, options in graphs:
        sla = graph.sla.latency_seconds
        usable = _reduce(graph, options, snapshot)
        mine: dict[str, list[tuple[int, Config]]] = {}
        duration: dict[str, dict[int, float]] = {}
        for name in options:
            cols = [(b.var(c.objective / scale, binary=True), c) for c in usable[name]]
            mine[name] = cols
            duration[name] = {col: c.latency / sla for col, c in cols}
            for col, c in cols:
                for pool_name, units in c.usage:
                    pool_use.setdefault(pool_name, {})[col] = units
            b.row({col: 1.0 for col, _ in cols}, 1.0, 1.0)
        _timing(b, graph, duration)
        chosen_from.append(mine)
    for key, limit in snapshot.capacities().items():
        if key in pool_use:
            b.row(pool_use[key], -INF, limit)
    picked, status = _run(b, chosen_from, time_limit)
    selections = None if picked is None else [
        {(name, phase): o for name, c in one.items() for phase, o in c.parts} for one in picked]
    return JointResult(selections, status, time.perf_counter() - started, len(b.cost),
                       len(b.rows))


def _reduce(
    graph: GraphModel, options: Mapping[str, StepOptions], snapshot: ClusterSnapshot
) -> dict[str, list[Config]]:
    """The two exact reductions of ``bounds``: drop too-slow configurations, fix slack steps."""
    if not all(so.configs for so in options.values()):
        return {name: so.configs for name, so in options.items()}
    capped = set(snapshot.capacities())
    fastest = {name: min(c.latency for c in so.configs) for name, so in options.items()}
    cheapest = {name: min(so.configs, key=lambda c: (c.objective, c.latency))
                for name, so in options.items()}
    room_fast = bounds.latency_caps(graph, fastest)
    room_cheap = bounds.latency_caps(graph, {n: c.latency for n, c in cheapest.items()})
    out = {}
    for name, so in options.items():
        c0 = cheapest[name]
        if (c0.latency <= room_cheap[name] * (1 + SLACK_TOL)
                and not any(p in capped for c in so.configs for p, _ in c.usage)):
            out[name] = [c0]
            continue
        cap = room_fast[name] * (1 + SLACK_TOL) + 1e-12
        out[name] = [c for c in so.configs if c.latency <= cap]
    return out


def _timing(
    b: _Builder, graph: GraphModel, duration: Mapping[str, Mapping[int, float]]
) -> None:
    finish: dict[str, int] = {}
    for block in graph.blocks:
        fb = b.var()
        finish[block.id] = fb
        if block.loop is not None:
            length = b.var()
            local = {step: b.var() for step in block.loop.steps}
            for step in block.loop.steps:
                for p in block.loop.body_preds[step] or (None,):
                    coefs = {local[step]: 1.0, **{c: -v for c, v in duration[step].items()}}
                    if p is not None:
                        coefs[local[p]] = -1.0
                    b.row(coefs, 0.0, INF)
                b.row({length: 1.0, local[step]: -1.0}, 0.0, INF)
            own = {length: -block.loop.expected}
        else:
            assert block.step is not None
            own = {c: -v for c, v in duration[block.step].items()}
        for p in block.preds or (None,):
            coefs = {fb: 1.0, **own}
            if p is not None:
                coefs[finish[p]] = -1.0
            b.row(coefs, 0.0, INF)
    for sink in graph.sinks:
        b.row({finish[sink]: 1.0}, -INF, 1.0)


def _run(
    b: _Builder, chosen_from: Sequence[Mapping[str, list[tuple[int, Config]]]],
    time_limit: float,
) -> tuple[list[dict[str, Config]] | None, str]:
    n = len(b.cost)
    rows, cols, vals = [], [], []
    for r, coefs in enumerate(b.rows):
        for c, v in coefs.items():
            rows.append(r)
            cols.append(c)
            vals.append(v)
    matrix = sparse.csr_array((vals, (rows, cols)), shape=(len(b.rows), n))
    result = optimize.milp(
        c=np.array(b.cost),
        integrality=np.array(b.integer),
        bounds=optimize.Bounds(np.zeros(n), np.array(b.upper)),
        constraints=optimize.LinearConstraint(matrix, np.array(b.lo), np.array(b.hi)),
        options={"time_limit": time_limit, "mip_rel_gap": MIP_REL_GAP, "presolve": True},
    )
    if result.x is None:
        return None, "infeasible" if result.status == 2 else f"no solution ({result.message})"
    picked = [{name: max(cols, key=lambda cc: result.x[cc[0]])[1]
               for name, cols in one.items()} for one in chosen_from]
    if result.status == 0:
        return picked, "optimal"
    gap = getattr(result, "mip_gap", None)
    bound = f": within {gap:.3%} of the lower bound" if gap is not None else ""
    return picked, f"time limit{bound}"
