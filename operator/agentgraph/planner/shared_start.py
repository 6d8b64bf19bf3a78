"""A first plan for a graph whose steps share model servers, for reduced-cost fixing.

From the LP relaxation's solution: every step (phase) at the fastest option (or configuration)
the LP uses, so its duration is at most the LP's and the SLA rows still hold; then every shared
server given one (TP, batch): where the LP put a group's steps on one pool at several, the one
with the least summed latency. Then improved, while ``evaluate`` finds it feasible: a server
moves to another pool or (TP, batch), a step joins its group's server on another pool.
Nothing here needs to be optimal, only feasible; the plan is checked and priced before use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agentgraph.costs.base import Phase
from agentgraph.planner import sharing
from agentgraph.planner.candidates import Config, Option, StepOptions
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot

SUPPORT = 1e-9  # a column the LP uses
PASSES = 4  # bound on the improvement's passes

Slot = tuple[str, Phase]
Pick = dict[Slot, Option]


def first_plan(graph: GraphModel, options: Mapping[str, StepOptions],
               configs: Mapping[str, Sequence[tuple[int, Config]]],
               shared: Mapping[Slot, Sequence[tuple[int, Option]]], x: np.ndarray,
               snapshot: ClusterSnapshot) -> Pick | None:
    """A feasible selection built from the LP solution ``x``, or None."""
    pick: Pick = {}
    for name, cols in configs.items():
        if not cols:
            return None
        used = [c for col, c in cols if x[col] > SUPPORT] or [c for _, c in cols]
        best = min(used, key=lambda c: (c.latency, c.objective))
        pick.update({(name, phase): o for phase, o in best.parts})
    for slot, choices in shared.items():
        if not choices:
            return None
        taken = [o for col, o in choices if x[col] > SUPPORT] or [o for _, o in choices]
        pick[slot] = min(taken, key=lambda o: (o.estimate.latency, o.objective))
    table = _shapes(shared)
    for (_, phase, pool), members in _servers(graph, pick).items():
        shapes = {(pick[(m, phase)].estimate.tensor_parallel, pick[(m, phase)].estimate.batch)
                  for m in members}
        if len(shapes) > 1:
            fits = [k for k in shapes if all((m, phase, pool, k) in table for m in members)]
            if not fits:
                return None
            best_k = min(fits, key=lambda k: sum(table[(m, phase, pool, k)].estimate.latency
                                                 for m in members))
            for m in members:
                pick[(m, phase)] = table[(m, phase, pool, best_k)]
    if not evaluate(graph, options, pick, snapshot).feasible:
        return None
    return _improve(graph, options, pick, table, snapshot)


def _shapes(shared: Mapping[Slot, Sequence[tuple[int, Option]]]
            ) -> dict[tuple[str, Phase, str, tuple[int, int]], Option]:
    """(step, phase, pool, (TP, batch)) -> the step's option there, among those kept."""
    return {(step, phase, o.pool, (o.estimate.tensor_parallel, o.estimate.batch)): o
            for (step, phase), choices in shared.items() for _, o in choices}


def _servers(graph: GraphModel, pick: Pick) -> dict[tuple[str, Phase, str], list[str]]:
    out: dict[tuple[str, Phase, str], list[str]] = {}
    for key, members in graph.groups.items():
        for phase in ("prefill", "decode"):
            for m in members:
                out.setdefault((key, phase, pick[(m, phase)].pool), []).append(m)
    return out


def _improve(graph: GraphModel, options: Mapping[str, StepOptions], pick: Pick,
             table: Mapping[tuple[str, Phase, str, tuple[int, int]], Option],
             snapshot: ClusterSnapshot) -> Pick:
    """First-improvement local search over the two moves; every plan kept is feasible."""
    value = evaluate(graph, options, pick, snapshot).objective
    shapes_at: dict[str, set[tuple[int, int]]] = {}
    for (_, _, pool, k) in table:
        shapes_at.setdefault(pool, set()).add(k)
    for _ in range(PASSES):
        moved = False
        for (_, phase, _), members in _servers(graph, pick).items():
            for pool, k in sorted((p, k) for p, ks in shapes_at.items() for k in ks):
                if not all((m, phase, pool, k) in table for m in members):
                    continue
                tried = {**pick, **{(m, phase): table[(m, phase, pool, k)] for m in members}}
                value, moved = _keep(graph, options, snapshot, pick, tried, value, moved)
        for (_, phase, _), members in _servers(graph, pick).items():
            for m in members:
                for (other_key, other_phase, other_pool), there in _servers(graph, pick).items():
                    if other_phase != phase or m in there or graph.group_of[m] != other_key:
                        continue
                    lead = pick[(there[0], phase)]
                    k = (lead.estimate.tensor_parallel, lead.estimate.batch)
                    option = table.get((m, phase, other_pool, k))
                    if option is not None:
                        value, moved = _keep(graph, options, snapshot, pick,
                                             {**pick, (m, phase): option}, value, moved)
        if not moved:
            break
    return pick


def _keep(graph: GraphModel, options: Mapping[str, StepOptions], snapshot: ClusterSnapshot,
          pick: Pick, tried: Pick, value: float, moved: bool) -> tuple[float, bool]:
    """Take ``tried`` into ``pick`` when it is feasible and cheaper."""
    ev = evaluate(graph, options, tried, snapshot)
    if ev.feasible and ev.objective < value * (1 - 1e-12) - 1e-15:
        pick.clear()
        pick.update(tried)
        return ev.objective, True
    return value, moved


def milp_value(graph: GraphModel, options: Mapping[str, StepOptions],
               configs: Mapping[str, Sequence[tuple[int, Config]]],
               shared: Mapping[Slot, Sequence[tuple[int, Option]]], pick: Pick) -> float | None:
    """What the MILP's objective (unscaled) is for ``pick``, or None where ``pick`` uses a
    column the MILP does not have."""
    total = 0.0
    for name, cols in configs.items():
        wanted = {phase: pick[(name, phase)] for phase in options[name].slots}
        found = next((c for _, c in cols
                      if all(o is wanted[phase] for phase, o in c.parts)), None)
        if found is None:
            return None
        total += found.objective
    for slot, choices in shared.items():
        if not any(o is pick[slot] for _, o in choices):
            return None
    for name in {step for step, _ in shared}:
        t = options[name].transfers.get((pick[(name, "prefill")].pool,
                                         pick[(name, "decode")].pool))
        if t is None:
            return None
        total += t.objective
    servers, broken = sharing.servers(graph, pick)
    if broken:
        return None
    return total + sum(s.cost_per_hour for s in servers)
