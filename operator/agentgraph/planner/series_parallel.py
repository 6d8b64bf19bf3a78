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
apart, which is exact too, only slower. Fronts are arrays that remember which point of each
part made each of their points; only the final choices' options become ``Merged``
configurations, and ``expand`` walks those arrays back to one configuration per step.
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
MAX_PAIRS = 100_000  # combinations looked at in one series merge
SLACK_TOL = 1e-9  # as milp.SLACK_TOL: a duration meets its room up to rounding


class Front:
    """A Pareto front (duration, cost), fastest first. A step's own (``configs``), or made
    from ``parts``: point k combines point ``picks[i][k]`` of each part, their durations
    summed with ``weights`` (series) or the longest taken (parallel)."""

    __slots__ = ("configs", "cost", "how", "latency", "parts", "picks", "step", "weights")

    def __init__(self, latency: np.ndarray, cost: np.ndarray, *, step: str = "",
                 configs: Sequence[Config] = (), parts: tuple[Front, ...] = (),
                 picks: tuple[np.ndarray, ...] = (), how: str = "series",
                 weights: tuple[float, ...] = ()) -> None:
        self.latency, self.cost = latency, cost
        self.step, self.configs = step, configs
        self.parts, self.picks, self.how, self.weights = parts, picks, how, weights

    def __len__(self) -> int:
        return len(self.latency)

    @staticmethod
    def of(step: str, configs: Sequence[Config]) -> Front:
        """A step's configurations as a front (``bounds`` keeps dominated ones)."""
        lat = np.array([c.latency for c in configs])
        cost = np.array([c.objective for c in configs])
        keep = _front_indices(lat, cost, np.inf)
        return Front(lat[keep], cost[keep], step=step, configs=[configs[k] for k in keep])

    def expand(self, k: int, out: dict[str, Config]) -> None:
        """Point k as one configuration per step, into ``out``."""
        if not self.parts:
            out[self.step] = self.configs[k]
        for part, pick in zip(self.parts, self.picks, strict=True):
            part.expand(int(pick[k]), out)

    def measure(self, pick: Mapping[str, Config]) -> tuple[float, float] | None:
        """Duration and cost of the steps' configurations in ``pick`` combined as this front
        combines its parts; None when a step has none there."""
        if not self.parts:
            c = pick.get(self.step)
            return None if c is None else (c.latency, c.objective)
        got = [part.measure(pick) for part in self.parts]
        if any(g is None for g in got):
            return None
        parts = [g for g in got if g is not None]
        cost = sum(g[1] for g in parts)
        if self.how == "parallel":
            return max(g[0] for g in parts), cost
        return sum(w * g[0] for w, g in zip(self.weights, parts, strict=True)), cost


@dataclass(frozen=True)
class Merged(Config):
    """Option ``index`` of a merged choice's front (``parts`` and ``usage`` stay empty: it is
    expanded before anything reads them)."""

    front: Front | None = field(default=None, compare=False, repr=False)
    index: int = 0


@dataclass(frozen=True)
class Reduced:
    """The reduced model: a graph whose blocks are the merged choices (ids ``merged:<n>``), the
    steps left alone and the loops that did not reduce, with each choice's options."""

    graph: GraphModel
    options: dict[str, list[Config]]
    steps_before: int

    @property
    def choices(self) -> int:
        return len(self.options)


def expand(pick: Mapping[str, Config]) -> dict[str, Config]:
    """A configuration per choice of the reduced model -> a configuration per step."""
    out: dict[str, Config] = {}
    for name, c in pick.items():
        if isinstance(c, Merged):
            assert c.front is not None
            c.front.expand(c.index, out)
        else:
            out[name] = c
    return out


def lift(reduced: Reduced, pick: Mapping[str, Config]) -> dict[str, Config] | None:
    """A configuration per step -> per choice of the reduced model, each merged choice at an
    option of its front at least as fast and as cheap as the steps' own combination; None when
    a step's configuration is not among its options (or nothing on a front is that good)."""
    out: dict[str, Config] = {}
    for name, options in reduced.options.items():
        first = options[0]
        if isinstance(first, Merged):
            assert first.front is not None
            mine = first.front.measure(pick)
            found = None if mine is None else min(
                (c for c in options if c.latency <= mine[0] * (1 + 1e-12) + 1e-15
                 and c.objective <= mine[1] * (1 + 1e-12) + 1e-15),
                key=lambda c: (c.objective, c.latency), default=None)
        else:
            found = next((c for c in options if c == pick.get(name)), None)
        if found is None:
            return None
        out[name] = found
    return out


@dataclass
class _Node:
    id: str
    preds: set[str]
    succs: set[str]
    front: Front | None  # None: a loop kept whole, its steps apart
    head: float  # the longest path before it, every block at its fastest
    tail: float  # and after it
    block: Block | None = None  # the original block, while not merged
    merged: bool = False


def _room(sla: float, head: float, tail: float) -> float:
    return (sla - head - tail) * (1 + SLACK_TOL) + 1e-12


def reduce(graph: GraphModel, usable: Mapping[str, Sequence[Config]]) -> Reduced:
    """The graph with every series, parallel and loop merge made that keeps fronts small.
    ``usable``: each step's configurations (after ``bounds``), every step at least one."""
    sla = graph.sla.latency_seconds
    nodes = _nodes(graph, usable)
    counter = [0]
    too_large: set[tuple[str, str]] = set()  # merges tried and refused: their fronts stay so
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
                front = None if (a.id, b.id) in too_large else _combine(
                    a.front, b.front, "parallel", (1.0, 1.0), _room(sla, a.head, a.tail))
                if front is None:
                    too_large.add((a.id, b.id))
                    ids.pop(1)
                    continue
                ids[:2] = [_merge(nodes, counter, a, b, front, a.preds, a.succs, a.tail).id]
                changed = True
        for nid in sorted(nodes):
            if nid not in nodes:  # merged into another on this pass
                continue
            node = nodes[nid]
            if node.front is None or len(node.succs) != 1:
                continue
            nxt = nodes[next(iter(node.succs))]
            if nxt.front is None or nxt.preds != {node.id} or (node.id, nxt.id) in too_large:
                continue
            front = _combine(node.front, nxt.front, "series", (1.0, 1.0),
                             _room(sla, node.head, nxt.tail))
            if front is None:
                too_large.add((node.id, nxt.id))
                continue
            _merge(nodes, counter, node, nxt, front, node.preds, nxt.succs, nxt.tail)
            changed = True
    return _reduced(graph, usable, nodes)


def _nodes(graph: GraphModel, usable: Mapping[str, Sequence[Config]]) -> dict[str, _Node]:
    sla = graph.sla.latency_seconds
    fastest = {name: min(c.latency for c in cs) for name, cs in usable.items()}
    length = {b.id: bounds.block_length(b, fastest) for b in graph.blocks}
    preds = _direct_preds(graph)
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
        if b.loop is None:
            assert b.step is not None
            front: Front | None = Front.of(b.step, usable[b.step])
        else:
            front = _loop_front(b.loop, usable, _room(sla, head[b.id], tail[b.id]))
        nodes[b.id] = _Node(b.id, preds[b.id], succs[b.id], front, head[b.id], tail[b.id],
                            block=b, merged=b.loop is not None and front is not None)
    return nodes


def _direct_preds(graph: GraphModel) -> dict[str, set[str]]:
    """Each block's predecessors less those a longer path implies (durations are never
    negative, so such an edge is no limit; without it, more steps have a single predecessor
    or successor and merge). Reachability as bit sets, blocks in topological order."""
    index = {b.id: i for i, b in enumerate(graph.blocks)}
    succs: dict[str, list[str]] = {b.id: [] for b in graph.blocks}
    for b in graph.blocks:
        for p in b.preds:
            succs[p].append(b.id)
    reach: dict[str, int] = {}  # the blocks a block leads to, itself included
    for b in reversed(graph.blocks):
        mask = 1 << index[b.id]
        for s in succs[b.id]:
            mask |= reach[s]
        reach[b.id] = mask
    out: dict[str, set[str]] = {b.id: set() for b in graph.blocks}
    for b in graph.blocks:
        for p in b.preds:
            # p -> b is implied when b lies past another successor of p
            if not any(s != b.id and reach[s] >> index[b.id] & 1 for s in succs[p]):
                out[b.id].add(p)
    return out


def _loop_front(loop: LoopBlock, usable: Mapping[str, Sequence[Config]], room: float
                ) -> Front | None:
    """The loop as one choice of ``E * H + (E - 1) * R``, when its heads merge in parallel and
    its rest is one chain or parallel steps; None otherwise (the loop stays as it is)."""
    heads = _fold([Front.of(h, usable[h]) for h in loop.heads], "parallel")
    if heads is None:
        return None
    e = loop.expected
    if not loop.rest:
        keep = np.nonzero(e * heads.latency <= room)[0]
        return Front(e * heads.latency[keep], heads.cost[keep], parts=(heads,), picks=(keep,),
                     weights=(e,))
    rest = _rest_front(loop, usable)
    if rest is None:
        return None
    return _combine(heads, rest, "series", (e, e - 1), room)


def _rest_front(loop: LoopBlock, usable: Mapping[str, Sequence[Config]]) -> Front | None:
    """The rest of a loop's body as one choice (its longest path), when it is a single chain
    or a set of parallel single steps; None for anything else."""
    rest = list(loop.rest)
    preds = {s: loop.rest_preds(s) for s in rest}
    if all(not p for p in preds.values()):
        return _fold([Front.of(s, usable[s]) for s in rest], "parallel")
    order = list(nx.topological_sort(nx.DiGraph([(p, s) for s in rest for p in preds[s]])))
    is_chain = (len(order) == len(rest)
                and all(list(preds[s]) == ([order[i - 1]] if i else [])
                        for i, s in enumerate(order)))
    if not is_chain:
        return None
    return _fold([Front.of(s, usable[s]) for s in order], "series")


def _fold(fronts: list[Front], how: str) -> Front | None:
    """Fronts merged one after another, all in series or all in parallel."""
    out: Front | None = fronts[0]
    for other in fronts[1:]:
        assert out is not None
        out = _combine(out, other, how, (1.0, 1.0), np.inf)
        if out is None:
            return None
    return out


def _combine(a: Front, b: Front, how: str, weights: tuple[float, float], room: float
             ) -> Front | None:
    """The Pareto front of two fronts combined in series (weighted sum of durations) or in
    parallel (the longer duration), within ``room``; None when it would be too large."""
    la, lb = a.latency * weights[0], b.latency * weights[1]
    if how == "series":
        if len(a) * len(b) > MAX_PAIRS:
            return None
        lat = (la[:, None] + lb[None, :]).ravel()
        cost = (a.cost[:, None] + b.cost[None, :]).ravel()
        ia = np.repeat(np.arange(len(a)), len(b))
        ib = np.tile(np.arange(len(b)), len(a))
    else:
        # fronts are sorted by duration, so the cheapest option of one within the other's
        # duration is the last one at or under it
        ja = np.searchsorted(lb, la, side="right") - 1
        jb = np.searchsorted(la, lb, side="right") - 1
        ia = np.concatenate([np.nonzero(ja >= 0)[0], jb[jb >= 0]])
        ib = np.concatenate([ja[ja >= 0], np.nonzero(jb >= 0)[0]])
        lat = np.maximum(la[ia], lb[ib])
        cost = a.cost[ia] + b.cost[ib]
    keep = _front_indices(lat, cost, room)
    if len(keep) > MAX_FRONT:
        return None
    return Front(lat[keep], cost[keep], parts=(a, b), picks=(ia[keep], ib[keep]), how=how,
                 weights=weights)


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


def _merge(nodes: dict[str, _Node], counter: list[int], a: _Node, b: _Node, front: Front,
           preds: set[str], succs: set[str], tail: float) -> _Node:
    counter[0] += 1
    merged = _Node(f"merged:{counter[0]}", set(preds), set(succs), front, a.head, tail,
                   merged=True)
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
             nodes: dict[str, _Node]) -> Reduced:
    dag = nx.DiGraph()
    dag.add_nodes_from(nodes)
    dag.add_edges_from((p, n.id) for n in nodes.values() for p in n.preds)
    blocks = []
    options: dict[str, list[Config]] = {}
    for nid in nx.lexicographical_topological_sort(dag):
        node = nodes[nid]
        preds = tuple(sorted(node.preds))
        if node.merged:
            assert node.front is not None
            blocks.append(Block(id=nid, preds=preds, step=nid))
            f = node.front
            options[nid] = [Merged((), float(f.latency[k]), float(f.cost[k]), (), front=f,
                                   index=k) for k in range(len(f))]
            continue
        assert node.block is not None
        blocks.append(replace(node.block, preds=preds))
        steps = node.block.loop.steps if node.block.loop is not None else (node.block.step,)
        for s in steps:
            assert s is not None
            options[s] = list(usable[s])
    sinks = tuple(b.id for b in blocks if not nodes[b.id].succs)
    return Reduced(replace(graph, blocks=tuple(blocks), sinks=sinks), options, len(graph.steps))
