"""An exact branch and bound for the configuration MILP, raced against HiGHS's own (milp.py).

The MILP picks one configuration per step. Its LP relaxation leaves few steps fractional (about
eight on a 100-step graph at a binding SLA), and each step's configurations are ordered by
latency. So a node here is, per step, an interval of that order, and a fractional step is split
where its LP duration falls: the faster configurations on one side, the slower on the other.
Each child's LP is solved at once (dual simplex, warm from the last basis), so the best-first
queue orders children by their own bound. At every node:
- the LP solution with each step at the fastest configuration it uses is a feasible plan
  (durations only shrink; without capacity rows, nothing else can break), a new incumbent when
  it is cheaper;
- a new incumbent is first improved step by step (``milp._improve``); on 500-step graphs
  this halves the time of some, as the cutoff tightens sooner;
- reduced-cost fixing: a configuration whose reduced cost exceeds the gap between the
  incumbent and the node's bound is in no cheaper plan below this node;
- the step to split is chosen by how much its split raises the two children's bounds
  (reliability branching): a step split fewer than ``RELIABLE`` times before has both children
  solved to see (at most ``LOOK_AHEAD`` such steps per node), a step split that often is
  judged by the mean rise of its earlier splits; the children of the chosen split are the
  ones kept. Measured: a quarter of the nodes, and half the time, of splitting the step whose
  used configurations differ most in cost (which now only orders the steps looked at).
The search stops when the best open bound is within the relative gap of the incumbent (proven),
at the deadline, when told to (the other engine finished first), or when its open nodes would
take more than ``OPEN_BYTES`` (each keeps its LP solution and reduced costs over the columns
left): HiGHS goes on with the trees this search cannot hold.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highspy
import numpy as np

FRACTIONAL = 1e-6  # a group is integral when one column is within this of 1
SUPPORT = 1e-9  # a column is used by the LP solution above this
OPEN_BYTES = 64 * 2**20  # the open nodes' memory; past it this search yields (HiGHS goes on)
RELIABLE = 2  # splits of a step after which its mean rise in bound stands for a new one
LOOK_AHEAD = 4  # steps per node whose split is solved to be judged
LESSER = 1 / 6  # a split's score: the smaller rise of its children plus this much of the larger


@dataclass(frozen=True)
class Group:
    """One step's columns, fastest first, with their latencies and objective coefficients."""

    columns: np.ndarray
    latency: np.ndarray


@dataclass(frozen=True)
class Answer:
    chosen: np.ndarray | None  # per group, the column picked; None: no plan found
    value: float  # its objective (scaled as the LP's), inf without one
    bound: float  # no plan costs less
    proven: bool  # value within the gap of bound
    nodes: int


@dataclass(order=True)
class _Node:
    bound: float
    order: int
    intervals: dict[int, tuple[int, int]]
    fixed: np.ndarray  # per column of the search, fixed away below this node
    x: np.ndarray  # the LP solution, over ``columns`` (the search's columns, group by group)
    reduced: np.ndarray  # its reduced costs, likewise


def search(
    highs: highspy.Highs,
    groups: Sequence[Group],
    cost: np.ndarray,
    upper: np.ndarray,
    incumbent: tuple[np.ndarray, float] | None,
    rounding: bool,
    gap: float,
    deadline: float,
    stop: threading.Event,
    improve: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Answer:
    """``highs`` holds the LP relaxation (no integrality). ``incumbent``: per group the column
    of a known feasible plan, and its value. ``rounding``: the rounded-up LP solution is
    feasible (no capacity rows). ``improve``: a feasible plan (a column per group) -> a plan at
    most as costly; every new incumbent from a fractional node's rounding goes through it
    (the rounding leaves the split steps faster than the LP needed them)."""
    columns = np.concatenate([g.columns for g in groups])
    # Where each group starts and ends in ``columns``: per-group maxima and firsts in one
    # numpy call, and a group's share of a node's arrays as a slice.
    ends = np.cumsum([len(g.columns) for g in groups])
    starts = ends - [len(g.columns) for g in groups]
    best, value = (None, np.inf) if incumbent is None else incumbent
    nodes = 0
    counter = 0
    lost = False
    # Per group: the summed rise in bound of its faster and its slower child, and its splits.
    rise: list[list[float]] = [[0.0, 0.0] for _ in groups]
    splits = [0] * len(groups)

    applied = upper[columns]  # the columns' upper bounds as the LP holds them now

    def solve(intervals: dict[int, tuple[int, int]], fixed: np.ndarray) -> _Node | None:
        nonlocal applied
        wanted = np.where(fixed, 0.0, upper[columns])
        for gi, (a, b) in intervals.items():
            wanted[starts[gi]:starts[gi] + a] = 0.0
            wanted[starts[gi] + b:ends[gi]] = 0.0
        changed = np.flatnonzero(wanted != applied)
        if len(changed):  # only what differs from the last node's LP
            highs.changeColsBounds(len(changed), columns[changed].astype(np.int32),
                                   np.zeros(len(changed)), wanted[changed])
            applied = wanted
        highs.run()
        status = highs.getModelStatus()
        if status not in (highspy.HighsModelStatus.kOptimal,
                          highspy.HighsModelStatus.kInfeasible):
            highs.clearSolver()  # warm starts now and then end "unknown": solve it afresh
            highs.run()
            status = highs.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            if status != highspy.HighsModelStatus.kInfeasible:
                nonlocal lost  # the LP failed: nothing below it is proven, so nothing is
                lost = True
            return None
        nonlocal counter
        counter += 1
        solution = highs.getSolution()
        return _Node(highs.getInfo().objective_function_value, counter, intervals, fixed,
                     np.array(solution.col_value)[columns], np.array(solution.col_dual)[columns])

    def cutoff() -> float:
        return value * (1 - gap) if np.isfinite(value) else np.inf

    def children(node: _Node, fixed: np.ndarray, gi: int
                 ) -> tuple[list[_Node | None], float]:
        """Both children of splitting group ``gi`` where its LP duration falls, and the
        split's score; the rises are remembered for the group."""
        g = groups[gi]
        share = node.x[starts[gi]:ends[gi]]
        a, b = node.intervals.get(gi, (0, len(g.columns)))
        split = int(np.searchsorted(g.latency, float(share @ g.latency), side="right"))
        split = min(max(split, a + 1), b - 1)
        kids = [solve({**node.intervals, gi: part}, fixed) for part in ((a, split), (split, b))]
        # A child with no LP (infeasible) or past the cutoff rises as far as the cutoff.
        top = cutoff()
        ceiling = top if np.isfinite(top) else node.bound + abs(node.bound) + 1.0
        rises = [max(min(k.bound, ceiling) if k is not None else ceiling, node.bound)
                 - node.bound for k in kids]
        rise[gi][0] += rises[0]
        rise[gi][1] += rises[1]
        splits[gi] += 1
        return kids, _score(*rises)

    root = solve({}, np.zeros(len(columns), dtype=bool))
    if root is None:  # infeasible, unless the LP failed
        bound = -np.inf if lost else np.inf
        return Answer(best, value, bound if best is None else min(bound, value), False, 0)
    queue = [root]
    held = _bytes(root)
    while (queue and not stop.is_set() and time.perf_counter() < deadline
           and held <= OPEN_BYTES):
        node = heapq.heappop(queue)
        held -= _bytes(node)
        if node.bound >= cutoff():
            queue = [node]
            break
        nodes += 1
        x = node.x
        fractional = np.flatnonzero(np.maximum.reduceat(x, starts) < 1 - FRACTIONAL)
        chosen = None
        if not len(fractional) or rounding:
            # Each group's first used column: its fastest used configuration, and in an
            # integral solution its only one (every group's columns sum to 1).
            used = np.flatnonzero(x > SUPPORT)
            chosen = columns[used[np.searchsorted(used, starts)]]
        if chosen is not None and float(cost[chosen].sum()) < value:
            if improve is not None and len(fractional):
                chosen = improve(chosen)
            best, value = chosen, float(cost[chosen].sum())
        if not len(fractional):
            continue
        fixed = node.fixed
        if np.isfinite(value):
            room = cutoff() - node.bound
            fixed = fixed | ((node.reduced > room + 1e-9) & (x <= SUPPORT))

        # Looked at in order of how much their used configurations differ in cost.
        order = sorted(fractional.tolist(), key=lambda i: -float(np.ptp(
            cost[groups[i].columns[x[starts[i]:ends[i]] > SUPPORT]])))
        kept: list[_Node | None] | None = None
        score = -np.inf
        for gi in [i for i in order if splits[i] < RELIABLE][:LOOK_AHEAD]:
            kids, mine = children(node, fixed, gi)
            if mine > score:
                kept, score = kids, mine
        judged = [(_score(rise[i][0] / splits[i], rise[i][1] / splits[i]), -k, i)
                  for k, i in enumerate(order) if splits[i] >= RELIABLE]
        if judged and (kept is None or max(judged)[0] > score):
            kept, _ = children(node, fixed, max(judged)[2])
        assert kept is not None
        for found_node in kept:
            if found_node is not None and found_node.bound < cutoff():
                heapq.heappush(queue, found_node)
                held += _bytes(found_node)
    # Pruning and fixing keep only what could beat the cutoff, so below it nothing is known.
    bound = min([cutoff(), *(n.bound for n in queue)])
    if lost:
        bound = -np.inf
    proven = best is not None and not lost and (not queue or bound >= value * (1 - gap))
    return Answer(best, value, bound, proven, nodes)


def _score(faster: float, slower: float) -> float:
    """A split's worth from its children's rises in bound: the smaller counts most."""
    return min(faster, slower) + LESSER * max(faster, slower)


def _bytes(node: _Node) -> int:
    return node.x.nbytes + node.reduced.nbytes + node.fixed.nbytes
