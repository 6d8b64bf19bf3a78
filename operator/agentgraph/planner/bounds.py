"""Exact reductions before the MILP, both from one question: given every other step's duration,
how long may this step take and the graph still meet the SLA?

1. With every other step at its *fastest*, a configuration slower than that room is in no
   feasible plan: drop it.
2. On a Pareto front the cheapest configuration is the slowest, so no optimal plan gives a step
   more than its cheapest configuration's duration. If a step's cheapest configuration fits the
   room left with every other step at its *cheapest*, then fixing it there keeps any optimal plan
   feasible and costs nothing more (swap it into any optimum): fix it. This exchange argument
   needs the step to hold no units in a pool of limited size.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentgraph.planner.graph import Block, GraphModel


def latency_caps(graph: GraphModel, fastest: Mapping[str, float]) -> dict[str, float]:
    """Step -> the longest duration per visit it may have when every other step takes the
    duration given in ``fastest`` (named for reduction 1; reduction 2 passes the cheapest)."""
    length = {b.id: _block_length(b, fastest) for b in graph.blocks}
    head: dict[str, float] = {}
    for b in graph.blocks:
        head[b.id] = max((head[p] + length[p] for p in b.preds), default=0.0)
    successors: dict[str, list[str]] = {b.id: [] for b in graph.blocks}
    for b in graph.blocks:
        for p in b.preds:
            successors[p].append(b.id)
    tail: dict[str, float] = {}
    for b in reversed(graph.blocks):
        tail[b.id] = max((length[s] + tail[s] for s in successors[b.id]), default=0.0)
    sla = graph.sla.latency_seconds
    caps: dict[str, float] = {}
    for b in graph.blocks:
        room = sla - head[b.id] - tail[b.id]
        if b.loop is None:
            assert b.step is not None
            caps[b.step] = room
            continue
        body_room = room / b.loop.expected
        body_head, body_tail = _body_head_tail(b.loop.body_preds, fastest)
        for step in b.loop.steps:
            caps[step] = body_room - body_head[step] - body_tail[step]
    return caps


def _block_length(block: Block, fastest: Mapping[str, float]) -> float:
    if block.loop is None:
        assert block.step is not None
        return fastest[block.step]
    body_head, _ = _body_head_tail(block.loop.body_preds, fastest)
    return block.loop.expected * max(body_head[s] + fastest[s] for s in block.loop.steps)


def _body_head_tail(
    body_preds: Mapping[str, tuple[str, ...]], fastest: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    order: list[str] = []
    pending = list(body_preds)
    while pending:  # the body is a DAG (checked by graph.build)
        ready = next(s for s in pending if all(p in order for p in body_preds[s]))
        order.append(ready)
        pending.remove(ready)
    head: dict[str, float] = {}
    for s in order:
        head[s] = max((head[p] + fastest[p] for p in body_preds[s]), default=0.0)
    successors: dict[str, list[str]] = {s: [] for s in order}
    for s in order:
        for p in body_preds[s]:
            successors[p].append(s)
    tail: dict[str, float] = {}
    for s in reversed(order):
        tail[s] = max((fastest[n] + tail[n] for n in successors[s]), default=0.0)
    return head, tail
