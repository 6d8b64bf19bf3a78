"""Series-parallel reduction of the block DAG: steps merged into one choice, exactly.

Where the pools' capacity does not enter, a step touches the rest of the graph only through its
duration and its cost, so two steps can be replaced by one whose options are the Pareto front
(duration, cost) of their combinations, and no plan is lost:
- *series*: ``u`` is ``v``'s only predecessor and ``v`` is ``u``'s only successor; together
  they take ``d_u + d_v`` and cost ``c_u + c_v``;
- *parallel*: ``u`` and ``v`` have the same predecessors and the same successors; together
  they take ``max(d_u, d_v)`` and cost ``c_u + c_v``;
- a *loop* whose heads and rest reduce to one choice each becomes one choice of
  ``E * H + (E - 1) * R`` (the loop's time, ``evaluate.loop_length``).

Why it pays: the LP relaxation lets each of the parallel branches that meet the SLA exactly
take a fraction of its two neighbouring options, so a stage of sixteen parallel branches can
leave sixteen steps fractional. Merged, the stage is one choice whose front holds every
combination worth having; the LP's hull of that front lies above the sum of the branches'
hulls, and the whole stage leaves at most one choice fractional. (A series merge alone does not
tighten the LP: the hull of a sum of fronts is the sum of their hulls. It is done because it
makes parallel merges possible above it.)

Every front is pruned by the room the SLA leaves the merged part with every other block at its
fastest (``bounds`` reduction 1), and a merge whose front would pass ``MAX_FRONT`` options (or
whose series product would pass ``MAX_PAIRS``) is not made: the MILP then keeps those steps
apart, which is exact too, only slower. A merged choice is a ``Merged`` configuration that
names the configuration of each step (or merged part) it stands for; ``expand`` turns a pick
over the reduced model back into one configuration per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np

from agentgraph.planner import bounds
from agentgraph.planner.candidates import Config
from agentgraph.planner.graph import Block, GraphModel, LoopBlock

MAX_FRONT = 600  # options in one merged choice
MAX_PAIRS = 250_000  # combinations looked at in one series merge
SLACK_TOL = 1e-9  # as milp.SLACK_TOL: a duration meets its room up to rounding


@dataclass(frozen=True)
class Merged(Config):
    """Several steps' configurations taken together: ``members`` names each part (a step, or
    another merged choice) and its configuration. ``parts`` and ``usage`` are empty: this
    choice is expanded before anything reads them."""

    members: tuple[tuple[str, Config], ...] = ()
    how: str = "series"  # or "parallel": how the members' durations combine
    weights: tuple[float, ...] | None = None  # series: each member's multiplier (None: ones)


@dataclass(frozen=True)
class Reduced:
    """The reduced model: a graph whose blocks are the merged choices (ids ``merged:<n>``), the
    steps left alone and the loops that did not reduce, with each choice's options."""

    graph: GraphModel
    options: dict[str, list[Config]]
    steps_before: int
    columns_before: int

    @property
    def choices(self) -> int:
        return len(self.options)

    @property
    def columns(self) -> int:
        return sum(len(v) for v in self.options.values())


def expand(pick: Mapping[str, Config]) -> dict[str, Config]:
    """A configuration per choice of the reduced model -> a configuration per step."""
    out: dict[str, Config] = {}
    pending = list(pick.items())
    while pending:
        name, c = pending.pop()
        if isinstance(c, Merged):
            pending.extend(c.members)
        else:
            out[name] = c
    return out


def lift(reduced: Reduced, pick: Mapping[str, Config]) -> dict[str, Config] | None:
    """A configuration per step -> per choice of the reduced model, each merged choice at an
    option of its front at least as fast and as cheap as the steps' own combination; None when
    a step's configuration is not among its options (or nothing on a front is that good)."""
    out: dict[str, Config] = {}
    for name, options in reduced.options.items():
        if name in pick:
            found = next((c for c in options if c == pick[name]), None)
        else:
            parts = _combined(name, options, pick)
            found = None if parts is None else min(
                (c for c in options if c.latency <= parts[0] * (1 + 1e-12) + 1e-15
                 and c.objective <= parts[1] * (1 + 1e-12) + 1e-15),
                key=lambda c: (c.objective, c.latency), default=None)
        if found is None:
            return None
        out[name] = found
    return out


def _combined(name: str, options: Sequence[Config], pick: Mapping[str, Config]
              ) -> tuple[float, float] | None:
    """The duration and cost of the steps' own configurations under a merged choice."""
    shape = next((c for c in options if isinstance(c, Merged)), None)
    if shape is None:
        return None
    return _measure(shape, pick)


def _measure(c: Merged, pick: Mapping[str, Config]) -> tuple[float, float] | None:
    # The merge that made this choice is recorded on it: how its members combine.
    parts = []
    for member, sample in c.members:
        if isinstance(sample, Merged):
            got = _measure(sample, pick)
        else:
            mine = pick.get(member)
            got = None if mine is None else (mine.latency, mine.objective)
        if got is None:
            return None
        parts.append(got)
    if c.how == "parallel":
        return max(p[0] for p in parts), sum(p[1] for p in parts)
    weights = c.weights or (1.0,) * len(parts)
    return (sum(w * p[0] for w, p in zip(weights, parts, strict=True)),
            sum(p[1] for p in parts))


@dataclass
class _Node:
    id: str
    preds: set[str]
    succs: set[str]
    front: list[Config] | None  # None: a loop kept whole, its steps apart
    head: float  # the longest path before it, every block at its fastest
    tail: float  # and after it
    block: Block | None = None  # the original block, for a node not merged
    members: list[str] = field(default_factory=list)  # the original blocks it stands for


def reduce(graph: GraphModel, usable: Mapping[str, Sequence[Config]]) -> Reduced:
    """The graph with every series, parallel and loop merge made that keeps fronts small.
    ``usable``: each step's configurations (after ``bounds``), every step at least one."""
    before = sum(len(v) for v in usable.values())
    sla = graph.sla.latency_seconds
    fastest = {name: min(c.latency for c in cs) for name, cs in usable.items()}
    nodes = _nodes(graph, usable, fastest)
    counter = [0]

    def room(node: _Node) -> float:
        return (sla - node.head - node.tail) * (1 + SLACK_TOL) + 1e-12

    changed = True
    while changed:
        changed = False
        # parallel first: they tighten the relaxation
        groups: dict[tuple[frozenset[str], frozenset[str]], list[str]] = {}
        for nid in sorted(nodes):
            node = nodes[nid]
            if node.front is not None:
                groups.setdefault((frozenset(node.preds), frozenset(node.succs)), []).append(nid)
        for ids in groups.values():
            while len(ids) > 1:
                a, b = nodes[ids[0]], nodes[ids[1]]
                assert a.front is not None and b.front is not None
                front = _parallel(a, b, room(a))
                if front is None:
                    ids.pop(1)
                    continue
                merged = _merge(nodes, counter, a, b, front, a.preds, a.succs, a.head, a.tail)
                ids[:2] = [merged.id]
                changed = True
        for nid in sorted(nodes):
            if nid not in nodes:  # merged into another on this pass
                continue
            node = nodes[nid]
            if node.front is None or len(node.succs) != 1:
                continue
            nxt = nodes[next(iter(node.succs))]
            if nxt.front is None or nxt.preds != {node.id}:
                continue
            front = _series(node, nxt, (sla - node.head - nxt.tail) * (1 + SLACK_TOL) + 1e-12)
            if front is None:
                continue
            _merge(nodes, counter, node, nxt, front, node.preds, nxt.succs, node.head, nxt.tail)
            changed = True
    return _reduced(graph, usable, nodes, before)


def _nodes(graph: GraphModel, usable: Mapping[str, Sequence[Config]],
           fastest: Mapping[str, float]) -> dict[str, _Node]:
    sla = graph.sla.latency_seconds
    length = {b.id: bounds.block_length(b, fastest) for b in graph.blocks}
    # An edge implied by a longer path is no limit (durations are never negative): without
    # them, more steps have a single predecessor or successor and merge.
    dag = nx.DiGraph()
    dag.add_nodes_from(b.id for b in graph.blocks)
    dag.add_edges_from((p, b.id) for b in graph.blocks for p in b.preds)
    direct = nx.transitive_reduction(dag)
    preds = {b.id: set(direct.predecessors(b.id)) for b in graph.blocks}
    head: dict[str, float] = {}
    succs: dict[str, set[str]] = {b.id: set() for b in graph.blocks}
    for b in graph.blocks:
        head[b.id] = max((head[p] + length[p] for p in b.preds), default=0.0)
        for p in preds[b.id]:
            succs[p].add(b.id)
    tail: dict[str, float] = {}
    for b in reversed(graph.blocks):
        tail[b.id] = max((length[s] + tail[s] for s in succs[b.id]), default=0.0)
    nodes = {}
    for b in graph.blocks:
        front: list[Config] | None
        if b.loop is None:
            assert b.step is not None
            front = _own(usable[b.step])
        else:
            front = _loop_front(b.loop, usable, (sla - head[b.id] - tail[b.id])
                                * (1 + SLACK_TOL) + 1e-12)
        nodes[b.id] = _Node(b.id, preds[b.id], succs[b.id], front, head[b.id], tail[b.id],
                            block=b, members=[b.id])
    return nodes


Named = tuple[str, list[Config]]  # a front and what its raw options belong to


def _loop_front(loop: LoopBlock, usable: Mapping[str, Sequence[Config]], room: float
                ) -> list[Config] | None:
    """The loop as one choice of ``E * H + (E - 1) * R``, when its heads merge in parallel and
    its rest is one chain or parallel steps; None otherwise (the loop stays as it is)."""
    heads = _fold([(h, _own(usable[h])) for h in loop.heads], "parallel")
    if heads is None:
        return None
    e = loop.expected
    if not loop.rest:
        name, front = heads
        return [Merged((), e * c.latency, c.objective, (), members=((name, c),),
                       weights=(e,)) for c in front if e * c.latency <= room]
    rest = _rest_front(loop, usable)
    if rest is None:
        return None
    return _combine([heads, rest], (e, e - 1), room, "series")


def _rest_front(loop: LoopBlock, usable: Mapping[str, Sequence[Config]]) -> Named | None:
    """The rest of a loop's body as one choice (its longest path), when it is a single chain
    or a set of parallel single steps; None for anything else."""
    rest = list(loop.rest)
    preds = {s: loop.rest_preds(s) for s in rest}
    if all(not p for p in preds.values()):
        return _fold([(s, _own(usable[s])) for s in rest], "parallel")
    order = list(nx.topological_sort(nx.DiGraph([(p, s) for s in rest for p in preds[s]])))
    is_chain = (len(order) == len(rest)
                and all(list(preds[s]) == ([order[i - 1]] if i else [])
                        for i, s in enumerate(order)))
    if not is_chain:
        return None
    return _fold([(s, _own(usable[s])) for s in order], "series")


def _fold(fronts: list[Named], how: str) -> Named | None:
    """Fronts merged one after another, all in series or all in parallel."""
    out: Named | None = fronts[0]
    for other in fronts[1:]:
        assert out is not None
        merged = _combine([out, other], (1.0, 1.0), np.inf, how)
        if merged is None:
            return None
        out = (f"{out[0]}+{other[0]}", merged)
    return out


def _own(configs: Sequence[Config]) -> list[Config]:
    """A step's options as a front, fastest first (``bounds`` keeps dominated ones)."""
    return _pareto(sorted(configs, key=lambda c: (c.latency, c.objective)))


def _parallel(a: _Node, b: _Node, room: float) -> list[Config] | None:
    assert a.front is not None and b.front is not None
    return _combine([(a.id, a.front), (b.id, b.front)], (1.0, 1.0), room, "parallel")


def _series(a: _Node, b: _Node, room: float) -> list[Config] | None:
    assert a.front is not None and b.front is not None
    return _combine([(a.id, a.front), (b.id, b.front)], (1.0, 1.0), room, "series")


def _combine(parts: list[Named], weights: tuple[float, float], room: float,
             how: str) -> list[Config] | None:
    """The Pareto front of two fronts combined in series (weighted sum of durations) or in
    parallel (the longer duration), within ``room``; None when it would be too large."""
    (na, fa), (nb, fb) = parts
    la = np.array([c.latency for c in fa]) * weights[0]
    lb = np.array([c.latency for c in fb]) * weights[1]
    ca = np.array([c.objective for c in fa])
    cb = np.array([c.objective for c in fb])
    if how == "series":
        if len(fa) * len(fb) > MAX_PAIRS:
            return None
        lat = (la[:, None] + lb[None, :]).ravel()
        cost = (ca[:, None] + cb[None, :]).ravel()
        ia = np.repeat(np.arange(len(fa)), len(fb))
        ib = np.tile(np.arange(len(fb)), len(fa))
    else:
        # fronts are sorted by duration, so the cheapest option of one within the other's
        # duration is the last one at or under it
        ja = np.searchsorted(lb, la, side="right") - 1
        jb = np.searchsorted(la, lb, side="right") - 1
        okb = ja >= 0
        oka = jb >= 0
        ia = np.concatenate([np.arange(len(fa))[okb], jb[oka]])
        ib = np.concatenate([ja[okb], np.arange(len(fb))[oka]])
        lat = np.maximum(la[ia], lb[ib])
        cost = ca[ia] + cb[ib]
    keep = _front_indices(lat, cost, room)
    if len(keep) > MAX_FRONT:
        return None
    return [Merged((), float(lat[k]), float(cost[k]), (),
                   members=((na, fa[ia[k]]), (nb, fb[ib[k]])), how=how,
                   weights=None if weights == (1.0, 1.0) else weights)
            for k in keep]


def _front_indices(lat: np.ndarray, cost: np.ndarray, room: float) -> np.ndarray:
    """Indices of the points within ``room`` that no other beats or ties on both axes,
    fastest first (ties: the first in the given order)."""
    inside = np.nonzero(lat <= room)[0]
    if inside.size == 0:
        return inside
    order = inside[np.lexsort((cost[inside], lat[inside]))]
    c = cost[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(c)[:-1]))
    return order[c < best_before]


def _pareto(front: list[Config]) -> list[Config]:
    lat = np.array([c.latency for c in front])
    cost = np.array([c.objective for c in front])
    return [front[k] for k in _front_indices(lat, cost, np.inf)]


def _merge(nodes: dict[str, _Node], counter: list[int], a: _Node, b: _Node,
           front: list[Config], preds: set[str], succs: set[str], head: float, tail: float
           ) -> _Node:
    counter[0] += 1
    merged = _Node(f"merged:{counter[0]}", set(preds), set(succs), front, head, tail,
                   members=[*a.members, *b.members])
    del nodes[a.id], nodes[b.id]
    for p in preds:
        nodes[p].succs -= {a.id, b.id}
        nodes[p].succs.add(merged.id)
    for s in succs:
        nodes[s].preds -= {a.id, b.id}
        nodes[s].preds.add(merged.id)
    nodes[merged.id] = merged
    return merged


def _reduced(graph: GraphModel, usable: Mapping[str, Sequence[Config]],
             nodes: dict[str, _Node], before: int) -> Reduced:
    dag = nx.DiGraph()
    dag.add_nodes_from(nodes)
    dag.add_edges_from((p, n.id) for n in nodes.values() for p in n.preds)
    blocks = []
    options: dict[str, list[Config]] = {}
    for nid in nx.lexicographical_topological_sort(dag):
        node = nodes[nid]
        preds = tuple(sorted(node.preds))
        if node.block is not None and node.block.loop is not None and node.front is None:
            blocks.append(replace(node.block, preds=preds))
            for s in node.block.loop.steps:
                options[s] = list(usable[s])
        elif node.block is not None and node.block.step is not None:
            blocks.append(replace(node.block, preds=preds))
            options[node.block.step] = list(usable[node.block.step])
        else:
            assert node.front is not None
            blocks.append(Block(id=nid, preds=preds, step=nid))
            options[nid] = node.front
    sinks = tuple(b.id for b in blocks if not nodes[b.id].succs)
    return Reduced(replace(graph, blocks=tuple(blocks), sinks=sinks), options,
                   len(graph.steps), before)
