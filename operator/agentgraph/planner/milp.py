"""The exact optimiser: one configuration per step phase, minimum objective, on HiGHS.

Variables
  x[o]      binary, option o of a (step, phase) slot is chosen; exactly one per slot
  z[s,p,q]  in [0, 1], LLM step s runs prefill on pool p and decode on pool q. The rows
            sum_q z[p,q] = x(prefill on p) and sum_p z[p,q] = x(decode on q) make z the product
            of the two binaries, so the KV transfer's latency and cost enter linearly.
  F[b]      finish time of block b; f[s] finish of step s inside its loop's body; L[l] the body's
            length. Times are in units of the SLA so every row is O(1).
Rows
  F[b] >= F[p] + D[b]           for every block edge p -> b (D: step duration, or E * L[l])
  F[b] <= 1                     for every sink block (the end-to-end SLA)
  TTFT[s] <= ttft               prefill + KV transfer + first token, per LLM step
  sum units * x <= capacity     per pool that has a known size
Replica counts are integers fixed by each option (ceil(rate / (throughput * max utilisation))),
so capacity and cost stay linear in x.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from agentgraph.costs.base import Phase
from agentgraph.planner.candidates import Option, StepOptions
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot

INF = np.inf


@dataclass(frozen=True)
class MilpResult:
    selection: dict[tuple[str, Phase], Option] | None  # None: infeasible (or no answer in time)
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

    def var(self, cost: float = 0.0, binary: bool = False, upper: float = INF) -> int:
        self.cost.append(cost)
        self.integer.append(1 if binary else 0)
        self.upper.append(1.0 if binary else upper)
        return len(self.cost) - 1

    def row(self, coefs: Mapping[int, float], lo: float, hi: float) -> None:
        merged: dict[int, float] = {}
        for col, val in coefs.items():
            merged[col] = merged.get(col, 0.0) + val
        self.rows.append(merged)
        self.lo.append(lo)
        self.hi.append(hi)


def solve(
    graph: GraphModel,
    options: Mapping[str, StepOptions],
    snapshot: ClusterSnapshot,
    time_limit: float = 60.0,
    enforce_sla: bool = True,
) -> MilpResult:
    started = time.perf_counter()
    b = _Builder()
    sla = graph.sla.latency_seconds
    scale = max((o.objective for so in options.values() for opts in so.slots.values()
                 for o in opts), default=1.0) or 1.0
    x: dict[tuple[str, Phase], list[tuple[int, Option]]] = {}
    duration: dict[str, dict[int, float]] = {}
    pool_use: dict[str, dict[int, float]] = {}
    for name, so in options.items():
        dur: dict[int, float] = {}
        ttft: dict[int, float] = {}
        for phase, opts in so.slots.items():
            cols = []
            for o in opts:
                col = b.var(o.objective / scale, binary=True)
                cols.append((col, o))
                dur[col] = o.estimate.latency / sla
                if phase == "prefill":
                    ttft[col] = o.estimate.latency
                elif phase == "decode":
                    ttft[col] = o.estimate.tbt or 0.0
                pool_use.setdefault(o.pool, {})[col] = o.units_total
            x[(name, phase)] = cols
            b.row({c: 1.0 for c, _ in cols}, 1.0, 1.0)
        if so.is_llm:
            z = {key: b.var(t.objective / scale, upper=1.0) for key, t in so.transfers.items()}
            for key, col in z.items():
                dur[col] = so.transfers[key].estimate.latency / sla
                ttft[col] = so.transfers[key].estimate.latency
            for phase, side in (("prefill", 0), ("decode", 1)):
                for pool_name in sorted({o.pool for _, o in x[(name, phase)]}):
                    coefs = {col: 1.0 for key, col in z.items() if key[side] == pool_name}
                    coefs.update({c: -1.0 for c, o in x[(name, phase)] if o.pool == pool_name})
                    b.row(coefs, 0.0, 0.0)
            if so.ttft is not None:
                b.row(ttft, -INF, so.ttft)
        duration[name] = dur
    _timing(b, graph, duration, enforce_sla)
    for pool in snapshot.pools:
        if pool.capacity_units is not None and pool.name in pool_use:
            b.row(pool_use[pool.name], -INF, pool.capacity_units)
    selection, status = _run(b, x, time_limit)
    return MilpResult(selection, status, time.perf_counter() - started, len(b.cost), len(b.rows))


def _timing(
    b: _Builder, graph: GraphModel, duration: Mapping[str, Mapping[int, float]], enforce: bool
) -> None:
    finish: dict[str, int] = {}
    for block in graph.blocks:
        fb = b.var()
        finish[block.id] = fb
        if block.loop is not None:
            length = b.var()
            local: dict[str, int] = {}
            for step in block.loop.steps:
                local[step] = b.var()
            for step in block.loop.steps:
                preds = block.loop.body_preds[step]
                for p in preds or (None,):
                    coefs = {local[step]: 1.0, **{c: -v for c, v in duration[step].items()}}
                    if p is not None:
                        coefs[local[p]] = coefs.get(local[p], 0.0) - 1.0
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
    if enforce:
        for sink in graph.sinks:
            b.row({finish[sink]: 1.0}, -INF, 1.0)


def _run(
    b: _Builder, x: Mapping[tuple[str, Phase], list[tuple[int, Option]]], time_limit: float
) -> tuple[dict[tuple[str, Phase], Option] | None, str]:
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
        options={"time_limit": time_limit, "mip_rel_gap": 1e-7, "presolve": True},
    )
    if result.x is None:
        return None, "infeasible" if result.status == 2 else f"no solution ({result.message})"
    chosen = {}
    for slot, cols_opts in x.items():
        best = max(cols_opts, key=lambda co: result.x[co[0]])
        chosen[slot] = best[1]
    status = "optimal" if result.status == 0 else f"time limit ({result.message})"
    return chosen, status
