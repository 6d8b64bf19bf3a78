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

import math
from collections.abc import Mapping

from agentgraph.planner import evaluate
from agentgraph.planner.graph import Block, GraphModel, LoopBlock


def latency_caps(graph: GraphModel, fastest: Mapping[str, float]) -> dict[str, float]:
    """Step -> the longest duration per visit it may have when every other step takes the
    duration given in ``fastest`` (named for reduction 1; reduction 2 passes the cheapest)."""
    length = {b.id: block_length(b, fastest) for b in graph.blocks}
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
        caps.update(_loop_caps(b.loop, fastest, room))
    return caps


def _loop_caps(loop: LoopBlock, fastest: Mapping[str, float], room: float) -> dict[str, float]:
    """The loop takes E * H + (E - 1) * R (evaluate.loop_length): a head may take what leaves
    the rest its time, a rest step what leaves the heads theirs (all of it when E is 1: the
    rest then never runs at the expected count)."""
    e = loop.expected
    heads = max(fastest[h] for h in loop.heads)
    before, after = _rest_head_tail(loop, fastest)
    rest = max((before[s] + fastest[s] for s in loop.rest), default=0.0)
    caps = dict.fromkeys(loop.heads, (room - (e - 1) * rest) / e)
    for s in loop.rest:
        caps[s] = ((room - e * heads) / (e - 1) - before[s] - after[s]) if e > 1 else math.inf
    return caps


def block_length(block: Block, fastest: Mapping[str, float]) -> float:
    if block.loop is None:
        assert block.step is not None
        return fastest[block.step]
    return evaluate.loop_length(block.loop, fastest)[0]


def _rest_head_tail(
    loop: LoopBlock, fastest: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per rest step, the longest rest path before it and after it."""
    order: list[str] = []
    pending = list(loop.rest)
    while pending:  # the body is a DAG (checked by graph.build)
        ready = next(s for s in pending if all(p in order for p in loop.rest_preds(s)))
        order.append(ready)
        pending.remove(ready)
    head: dict[str, float] = {}
    for s in order:
        head[s] = max((head[p] + fastest[p] for p in loop.rest_preds(s)), default=0.0)
    successors: dict[str, list[str]] = {s: [] for s in order}
    for s in order:
        for p in loop.rest_preds(s):
            successors[p].append(s)
    tail: dict[str, float] = {}
    for s in reversed(order):
        tail[s] = max((fastest[n] + tail[n] for n in successors[s]), default=0.0)
    return head, tail
