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
- reduced-cost fixing: a configuration whose reduced cost exceeds the gap between the
  incumbent and the node's bound is in no cheaper plan below this node.
The search stops when the best open bound is within the relative gap of the incumbent (proven),
at the deadline, when told to (the other engine finished first), or when its open nodes would
take more than ``OPEN_BYTES`` (each keeps its LP solution and reduced costs): it is the fast
engine for small trees, and leaves big ones to HiGHS.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

FRACTIONAL = 1e-6  # a group is integral when one column is within this of 1
SUPPORT = 1e-9  # a column is used by the LP solution above this
OPEN_BYTES = 64 * 2**20  # the open nodes' memory; past it this search yields (HiGHS goes on)


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
    fixed: frozenset[int]
    x: np.ndarray
    reduced: np.ndarray


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
) -> Answer:
    """``highs`` holds the LP relaxation (no integrality). ``incumbent``: per group the column
    of a known feasible plan, and its value. ``rounding``: the rounded-up LP solution is
    feasible (no capacity rows)."""
    columns = np.concatenate([g.columns for g in groups])
    best, value = (None, np.inf) if incumbent is None else incumbent
    nodes = 0
    counter = 0
    lost = False

    def solve(intervals: dict[int, tuple[int, int]], fixed: frozenset[int]) -> _Node | None:
        bounds = upper.copy()
        for gi, (a, b) in intervals.items():
            cols = groups[gi].columns
            bounds[cols[:a]] = 0.0
            bounds[cols[b:]] = 0.0
        if fixed:
            bounds[np.fromiter(fixed, dtype=np.int64)] = 0.0
        highs.changeColsBounds(len(columns), columns.astype(np.int32), np.zeros(len(columns)),
                               bounds[columns])
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
                     np.array(solution.col_value), np.array(solution.col_dual))

    def cutoff() -> float:
        return value * (1 - gap) if np.isfinite(value) else np.inf

    root = solve({}, frozenset())
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
        fractional = [i for i, g in enumerate(groups) if x[g.columns].max() < 1 - FRACTIONAL]
        chosen = None
        if not fractional:  # an integral LP solution is a plan
            chosen = np.array([g.columns[np.argmax(x[g.columns])] for g in groups])
        elif rounding:  # each step at the fastest configuration it uses (fastest first)
            chosen = np.array([g.columns[np.argmax(x[g.columns] > SUPPORT)] for g in groups])
        if chosen is not None and float(cost[chosen].sum()) < value:
            best, value = chosen, float(cost[chosen].sum())
        if not fractional:
            continue
        fixed = node.fixed
        if np.isfinite(value):
            room = cutoff() - node.bound
            dead = columns[(node.reduced[columns] > room + 1e-9) & (x[columns] <= SUPPORT)]
            if len(dead):
                fixed = fixed | frozenset(dead.tolist())
        # Branch on the fractional step whose used configurations differ most in cost.
        gi = max(fractional, key=lambda i: float(np.ptp(
            cost[groups[i].columns[x[groups[i].columns] > SUPPORT]])))
        g = groups[gi]
        a, b = node.intervals.get(gi, (0, len(g.columns)))
        duration = float(x[g.columns] @ g.latency)
        split = int(np.searchsorted(g.latency, duration, side="right"))
        split = min(max(split, a + 1), b - 1)
        for child in ((a, split), (split, b)):
            intervals = {**node.intervals, gi: child}
            found_node = solve(intervals, fixed)
            if found_node is not None and found_node.bound < cutoff():
                heapq.heappush(queue, found_node)
                held += _bytes(found_node)
    # Pruning and fixing keep only what could beat the cutoff, so below it nothing is known.
    bound = min([cutoff(), *(n.bound for n in queue)])
    if lost:
        bound = -np.inf
    proven = best is not None and not lost and (not queue or bound >= value * (1 - gap))
    return Answer(best, value, bound, proven, nodes)


def _bytes(node: _Node) -> int:
    return node.x.nbytes + node.reduced.nbytes + 64 * len(node.fixed)
