"""Why this plan: the cheapest single change per step (phase), and the plans a user would
pick by hand (one accelerator type; one pool)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from agentgraph.api.graph import Step, StepKind
from agentgraph.api.plan import Alternative, Baseline
from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates, diagnose, milp
from agentgraph.planner.candidates import StepOptions
from agentgraph.planner.evaluate import Evaluation, Selection, evaluate
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot


def accelerated(step: Step) -> bool:
    """Whether a user would put the step on an accelerator: not tools, CPU work or a vector
    search that is not accelerated."""
    if step.kind is StepKind.VECTOR_SEARCH:
        return step.vector_search is not None and step.vector_search.accelerated
    return step.kind not in (StepKind.TOOL, StepKind.COMPUTE)


def baselines(
    model: GraphModel, snapshot: ClusterSnapshot, settings: CostSettings, objective: float,
    time_limit: float,
) -> list[Baseline]:
    """Per accelerator pool, the cheapest plan with every accelerated step on it and the CPU
    steps on the CPU pools; then, where feasible, every step on one pool. ``objective``: the
    plan's, for ``extra``."""
    cpu = [p.name for p in snapshot.pools if p.is_cpu]
    accel = [p.name for p in snapshot.pools if not p.is_cpu]
    on_cpu = {name for name, flat in model.steps.items() if not accelerated(flat.step)}
    # Without CPU steps, or without a CPU pool to put them on, one accelerator type is one pool.
    mixed = bool(on_cpu and cpu)

    def baseline(pool: str, accelerated_only: bool) -> Baseline:
        within = {name: cpu if accelerated_only and name in on_cpu else [pool]
                  for name in model.steps}
        return _baseline(model, snapshot, settings, objective, time_limit, pool,
                         "accelerator" if accelerated_only else "single-pool", within)

    out = [baseline(pool, accelerated_only=mixed) for pool in accel]
    singles = (baseline(pool, accelerated_only=False) for pool in
               (snapshot.names if mixed else cpu))
    out += [b for b in singles if b.feasible]
    if model.groups:  # what sharing model servers saves: every step on servers of its own
        out.append(_baseline(model.unshared(), snapshot, settings, objective, time_limit, None,
                             "unshared", None))
    return out


def _baseline(model: GraphModel, snapshot: ClusterSnapshot, settings: CostSettings,
              objective: float, time_limit: float, pool: str | None, kind: Literal[
                  "accelerator", "single-pool", "unshared"],
              within: Mapping[str, list[str]] | None) -> Baseline:
    """The cheapest plan with each step on the pools ``within`` gives it (None: any pool);
    when none meets the limits, the fastest one and what it breaks."""
    options = candidates.build(model, snapshot, settings, only_pools=within)
    empty = diagnose.empty_slots(model, options)
    if empty:
        return Baseline(pool=pool, kind=kind, feasible=False, reason=empty[0])
    result = milp.solve(model, options, snapshot, time_limit)
    if result.selection is not None:
        ev = evaluate(model, options, result.selection, snapshot)
        return Baseline(pool=pool, kind=kind, feasible=ev.feasible, latency_seconds=ev.latency,
                        objective=ev.objective, extra=ev.objective - objective,
                        reason=None if ev.feasible else "; ".join(ev.violations))
    ev = evaluate(model, options, diagnose.fastest_selection(options), snapshot)
    reason = "; ".join(ev.violations) or "no plan of this kind meets every limit at once"
    return Baseline(pool=pool, kind=kind, feasible=False, latency_seconds=ev.latency,
                    objective=ev.objective, reason=reason)


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
