"""Why no plan exists, in terms a user can act on: the field, the best reachable figure."""

from __future__ import annotations

from collections.abc import Mapping

from agentgraph.costs.base import Phase
from agentgraph.planner.candidates import Option, StepOptions
from agentgraph.planner.evaluate import Selection, evaluate, exceeds, longest_path
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot


def empty_slots(graph: GraphModel, options: Mapping[str, StepOptions]) -> list[str]:
    """Steps (phases) no pool can run: the model fits nowhere, or a token limit is out of reach."""
    reasons: list[str] = []
    for name, so in options.items():
        for phase, opts in so.slots.items():
            if opts:
                continue
            # One line per pool: the list is long on a dozen pools.
            why = sorted({r.removeprefix(f"{phase}: ") for r in so.rejected
                          if r.startswith(f"{phase}: ")}) or ["no pool offers a configuration"]
            label = f"{so.step.path} ({name}{'' if phase == 'run' else ' ' + phase})"
            reasons.extend(f"{label}: fits no pool: {w}" for w in why)
        if so.is_llm and all(so.slots.values()) and not so.transfers:
            reasons.append(f"{so.step.path} ({name}): prefill and decode share no pool and no "
                           "KV transfer between their pools is known")
    return sorted(reasons)


def fastest_selection(options: Mapping[str, StepOptions]) -> dict[tuple[str, Phase], Option]:
    """Each step at its lowest latency, whatever it costs (capacity ignored)."""
    chosen: dict[tuple[str, Phase], Option] = {}
    for name, so in options.items():
        if not so.is_llm:
            chosen[(name, "run")] = min(so.slots["run"], key=lambda o: (o.estimate.latency,
                                                                         o.objective))
            continue
        best: tuple[float, float, Option, Option] | None = None
        for (src, dst), t in sorted(so.transfers.items()):
            pre = min((o for o in so.slots["prefill"] if o.pool == src),
                      key=lambda o: (o.estimate.latency, o.objective))
            dec = min((o for o in so.slots["decode"] if o.pool == dst),
                      key=lambda o: (o.estimate.latency, o.objective))
            total = pre.estimate.latency + t.estimate.latency + dec.estimate.latency
            cost = pre.objective + t.objective + dec.objective
            if best is None or (total, cost) < (best[0], best[1]):
                best = (total, cost, pre, dec)
        assert best is not None
        chosen[(name, "prefill")], chosen[(name, "decode")] = best[2], best[3]
    return chosen


def infeasible(
    graph: GraphModel,
    options: Mapping[str, StepOptions],
    snapshot: ClusterSnapshot,
    relaxed: Selection | None,
) -> list[str]:
    """Reasons, most fundamental first. ``relaxed`` is the cheapest plan without capacity limits
    (None when even that does not exist)."""
    fastest = fastest_selection(options)
    ev = evaluate(graph, options, fastest, snapshot)
    sla = graph.sla.latency_seconds
    if exceeds(ev.latency, sla):
        _, path = longest_path(graph, ev.durations, worst=False)
        dominant = max(path, key=lambda s: (ev.durations[s] * graph.visits[s], s))
        where = _where(fastest, dominant)
        return [
            f"spec.sla.latencySeconds: {sla:g} s cannot be met: the lowest latency any plan "
            f"reaches is {ev.latency:.4g} s; step {dominant} dominates it "
            f"({ev.durations[dominant] * graph.visits[dominant]:.4g} s on {where})"
        ]
    reasons = []
    for name, so in options.items():
        if so.ttft is None or not so.is_llm:
            continue
        best_ttft = min(
            min(o.estimate.latency for o in so.slots["prefill"] if o.pool == src)
            + t.estimate.latency
            + min(o.estimate.tbt or 0.0 for o in so.slots["decode"] if o.pool == dst)
            for (src, dst), t in so.transfers.items()
        )
        if exceeds(best_ttft, so.ttft):
            field = (f"{so.step.path}.llm.ttftSeconds"
                     if so.step.step.llm and so.step.step.llm.ttft_seconds
                     else "spec.sla.ttftSeconds")
            reasons.append(f"{field}: {so.ttft:g} s cannot be met by step {name}: the lowest "
                           f"time to first token is {best_ttft:.4g} s")
    if reasons:
        return sorted(reasons)
    if relaxed is not None:
        ev = evaluate(graph, options, relaxed, snapshot)
        short = [v for v in ev.violations if v.startswith("capacity:")]
        if short:
            return [f"pools are too small for the cheapest plan that meets the SLA: {v}"
                    for v in short]
        return ["the pools' capacity leaves no plan that meets the SLA"]
    return [f"spec.sla.latencySeconds: no plan meets the end-to-end SLA and every TTFT limit "
            f"together; alone, the fastest end-to-end plan takes {ev.latency:.4g} s"]


def _where(selection: Selection, step: str) -> str:
    pools = [o.pool for (s, _), o in sorted(selection.items()) if s == step]
    return "/".join(dict.fromkeys(pools))
