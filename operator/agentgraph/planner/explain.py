"""Why this plan: the cheapest single change per step (phase), and one-pool baselines."""

from __future__ import annotations

from collections.abc import Mapping

from agentgraph.api.plan import Alternative, Baseline
from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates, diagnose, milp
from agentgraph.planner.candidates import StepOptions
from agentgraph.planner.evaluate import Evaluation, Selection, evaluate
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot


def baselines(
    model: GraphModel, snapshot: ClusterSnapshot, settings: CostSettings, time_limit: float
) -> list[Baseline]:
    """For each pool, the cheapest plan that puts every step and phase on it; when none meets the
    limits, the fastest one on it and what it breaks."""
    out = []
    for pool in snapshot.names:
        options = candidates.build(model, snapshot, settings, only_pool=pool)
        empty = diagnose.empty_slots(model, options)
        if empty:
            out.append(Baseline(pool=pool, feasible=False, reason=empty[0]))
            continue
        result = milp.solve(model, options, snapshot, time_limit)
        if result.selection is not None:
            ev = evaluate(model, options, result.selection, snapshot)
            out.append(Baseline(pool=pool, feasible=ev.feasible, latency_seconds=ev.latency,
                                objective=ev.objective,
                                reason=None if ev.feasible else "; ".join(ev.violations)))
            continue
        ev = evaluate(model, options, diagnose.fastest_selection(options), snapshot)
        reason = "; ".join(ev.violations) or "no single-pool plan meets every limit at once"
        out.append(Baseline(pool=pool, feasible=False, latency_seconds=ev.latency,
                            objective=ev.objective, reason=reason))
    return out


def alternatives(
    model: GraphModel,
    options: Mapping[str, StepOptions],
    selection: Selection,
    chosen: Evaluation,
    snapshot: ClusterSnapshot,
) -> list[Alternative]:
    """Per slot: move it alone to each other pool (its cheapest option there that keeps the plan
    feasible); report the best such move, or what stops every move."""
    order = {name: i for i, name in enumerate(options)}
    out = []
    for (name, phase), current in sorted(selection.items(),
                                         key=lambda kv: (order[kv[0][0]], kv[0][1] != "prefill")):
        slot = options[name].slots[phase]
        best: tuple[float, str] | None = None
        blocked: list[tuple[str, str]] = []  # (pool, the first limit the move breaks)
        for pool in sorted({o.pool for o in slot} - {current.pool}):
            tried = sorted((o for o in slot if o.pool == pool), key=lambda o: o.objective)
            for o in tried:
                ev = evaluate(model, options, {**selection, (name, phase): o}, snapshot)
                if ev.feasible:
                    if best is None or ev.objective < best[0]:
                        best = (ev.objective, pool)
                    break
            else:
                ev = evaluate(model, options, {**selection, (name, phase): tried[0]}, snapshot)
                blocked.append((pool, ev.violations[0]))
        cheaper = [f"{p}: {v}" for p, v in blocked if _cheapest(slot, p) < current.objective]
        others = [f"{p}: {v}" for p, v in blocked if _cheapest(slot, p) >= current.objective]
        why = f"cheaper pools break a limit ({'; '.join(cheaper)})" if cheaper else (
            "cheapest feasible option for this phase")
        label = None if phase == "run" else phase
        if best is None:
            detail = ("no other pool can run it" if not blocked
                      else "no other pool keeps the plan feasible"
                      + (f" ({'; '.join(others)})" if others else ""))
            out.append(Alternative(step=name, phase=label, chosen_pool=current.pool,
                                   feasible=False, reason=f"{why}; {detail}"))
            continue
        out.append(Alternative(step=name, phase=label, chosen_pool=current.pool, pool=best[1],
                               feasible=True, objective=best[0],
                               delta=best[0] - chosen.objective,
                               reason=f"{why}; next best: {best[1]} at "
                               f"{best[0] - chosen.objective:+.4g}"))
    return out


def _cheapest(slot: list[candidates.Option], pool: str) -> float:
    return min(o.objective for o in slot if o.pool == pool)
