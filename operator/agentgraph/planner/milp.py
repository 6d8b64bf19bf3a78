"""The exact optimiser: one configuration per step, minimum objective, on HiGHS.

A configuration fixes everything about a step: for an LLM step its prefill option, its decode
option and the KV transfer between their pools (TTFT already checked when they were combined).
The MILP then only has to pick one configuration per step against the graph-wide limits:

Variables
  x[c]   binary, configuration c of its step is chosen; exactly one per step
  F[b]   finish time of block b; for a loop l: H[l] its heads' time, f[s] the finish of a
         step s of the rest of its body, R[l] the rest's length. Times are in units of the
         SLA so every row is O(1).
Rows
  F[b] >= F[p] + D[b]           for every block edge p -> b (D: step duration, or for a loop
                                E * H[l] + (E - 1) * R[l]: the graph leaves after the heads)
  F[b] <= 1                     for every sink block (the end-to-end SLA)
  sum units * x <= capacity     per pool that has a known size
Replica counts are integers fixed by each option (ceil(rate / (throughput * max utilisation))),
so capacity and cost stay linear in x. Before solving, ``bounds`` drops configurations no
feasible plan can use and fixes steps whose cheapest configuration is always safe.

HiGHS is called through highspy, quietly (nothing on stdout), with the GIL released while it
runs. Before the MILP, one LP relaxation gives a lower bound and reduced costs; a feasible plan
(the running one when re-planning, the LP's rounded-up solution, or the MILP over the LP's
support, each improved step by step) gives an upper bound. A configuration whose reduced cost
exceeds the gap between the two is in no plan cheaper than that feasible one, so it is dropped
(reduced-cost fixing, exact). Then HiGHS's branch and bound and ours (``branch``) race on
what is left, at every size: ours proves most plans first (its splits are chosen by solving
them), and HiGHS goes on where ours runs out of room for its open nodes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import highspy
import numpy as np

from agentgraph.api.plan import SolveStats
from agentgraph.planner import bounds, branch, lp, series_parallel, shared_milp
from agentgraph.planner.candidates import Config, StepOptions
from agentgraph.planner.evaluate import Selection
from agentgraph.planner.graph import GraphModel
from agentgraph.planner.snapshot import ClusterSnapshot

INF = np.inf
MIP_REL_GAP = 1e-4  # 'optimal': no plan is more than 0.01% cheaper (the README says so)
SLACK_TOL = 1e-9  # keep configurations that meet the SLA only up to rounding
FIX_TOL = 1e-7  # reduced-cost fixing keeps a configuration within this (relative) of the gap
IMPROVE_PASSES = 8  # bound on the start heuristic's passes over the steps
ENGINES = ("highs", "branch")  # raced; the first to prove its plan stops the other
NEIGHBOURHOOD_SECONDS = 2.0  # at most this (and a tenth of the time limit) for the RENS start
SUPPORT = 1e-9  # a column is used by an LP solution above this


@dataclass(frozen=True)
class MilpResult:
    selection: Selection | None  # None: infeasible (or no answer in time)
    status: str
    seconds: float
    variables: int
    rows: int
    gap: float | None = None  # proven relative gap of the selection; None without one
    stats: SolveStats | None = None


def solve(
    graph: GraphModel,
    options: Mapping[str, StepOptions],
    snapshot: ClusterSnapshot,
    time_limit: float = 60.0,
    start: Mapping[str, Config] | None = None,
    engines: Sequence[str] = ENGINES,
) -> MilpResult:
    """``start``: a configuration per step to try first (the running plan when re-planning);
    used only when it is feasible here. ``engines``: the exact searches raced ("highs",
    "branch"); tests run each alone."""
    joint = solve_joint([(graph, options)], snapshot, time_limit,
                        None if start is None else [start], engines)
    return MilpResult(None if joint.selections is None else joint.selections[0], joint.status,
                      joint.seconds, joint.variables, joint.rows, joint.gap, joint.stats)


@dataclass(frozen=True)
class JointResult:
    selections: Sequence[Selection] | None  # one per graph, in order; None: no plan for them all
    status: str
    seconds: float
    variables: int
    rows: int
    gap: float | None = None
    stats: SolveStats | None = None


@dataclass
class _Problem:
    """One graph's share of the MILP: its usable configurations and their columns."""

    graph: GraphModel
    usable: dict[str, list[Config]]
    columns: dict[str, list[tuple[int, Config]]]


def solve_joint(
    graphs: Sequence[tuple[GraphModel, Mapping[str, StepOptions]]],
    snapshot: ClusterSnapshot,
    time_limit: float = 60.0,
    starts: Sequence[Mapping[str, Config] | None] | None = None,
    engines: Sequence[str] = ENGINES,
) -> JointResult:
    """Several graphs on the same pools, in one MILP: each graph its own configuration rows and
    its own SLA rows, the pools' capacity rows summed over all of them; the objective is the
    sum of their objectives (all $/hour, or all $/request). One graph is ``solve``. Graphs
    whose steps share model servers are solved by ``shared_milp`` (``starts`` unused)."""
    started = time.perf_counter()
    if any(graph.groups for graph, _ in graphs):
        shared = shared_milp.solve(graphs, snapshot, time_limit)
        return JointResult(shared.selections, shared.status, time.perf_counter() - started,
                           shared.variables, shared.rows, shared.gap, shared.stats)
    # Where no configuration holds units of a limited pool, steps touch each other only
    # through their durations, and the steps merge (series_parallel): a smaller, tighter MILP.
    # (solve.plan tries the pools without their limits first, so this is the usual case.)
    capped = snapshot.capacities()
    merge = all(so.configs for _, options in graphs for so in options.values()) and not any(
        key in capped for _, options in graphs for so in options.values()
        for c in so.configs for key, _ in c.usage)
    return _solve(graphs, snapshot, time_limit, starts, engines, started, merge)


def _solve(
    graphs: Sequence[tuple[GraphModel, Mapping[str, StepOptions]]],
    snapshot: ClusterSnapshot,
    time_limit: float,
    starts: Sequence[Mapping[str, Config] | None] | None,
    engines: Sequence[str],
    started: float,
    merge: bool,
) -> JointResult:
    """One MILP over the graphs; ``merge``: each graph's steps merged where its structure
    allows (``series_parallel``; only where no capacity row is needed)."""
    b = lp.Builder()
    scale = max((c.objective for _, options in graphs for so in options.values()
                 for c in so.configs), default=1.0) or 1.0
    problems: list[_Problem] = []
    pool_use: dict[str, dict[int, float]] = {}
    merging: float | None = None  # seconds spent merging; None: no graph was merged
    bounded = 0  # configurations left by the bounds, before merging
    given = starts
    for index, (graph, options) in enumerate(graphs):
        sla = graph.sla.latency_seconds
        usable = _reduce(graph, options, snapshot)
        bounded += sum(len(v) for v in usable.values())
        model = graph
        if merge and all(usable.values()):  # (a step with none: infeasible, said as it is)
            t = time.perf_counter()
            reduced = series_parallel.reduce(graph, usable)
            merging = (merging or 0.0) + time.perf_counter() - t
            wanted = None if given is None else given[index]
            if given is not None and wanted is not None:  # the running plan, as choices
                known = _known(usable, wanted)
                lifted = None if known is None else series_parallel.lift(reduced, known)
                given = [*given[:index], lifted, *given[index + 1:]]
            model, usable = reduced.graph, reduced.options
        mine: dict[str, list[tuple[int, Config]]] = {}
        duration: dict[str, dict[int, float]] = {}
        for name in usable:
            cols = [(b.var(c.objective / scale, binary=True), c) for c in usable[name]]
            mine[name] = cols
            duration[name] = {col: c.latency / sla for col, c in cols}
            for col, c in cols:
                for pool_name, units in c.usage:
                    pool_use.setdefault(pool_name, {})[col] = units
            b.row({col: 1.0 for col, _ in cols}, 1.0, 1.0)
        lp.timing(b, model, duration)
        problems.append(_Problem(model, usable, mine))
    limits = {key: limit for key, limit in snapshot.capacities().items() if key in pool_use}
    for key, limit in limits.items():
        b.row(pool_use[key], -INF, limit)
    configurations = sum(len(so.configs) for _, options in graphs for so in options.values())
    run = _Run(b, problems, limits, scale, started, configurations)
    if merging is not None:
        run.seconds["merge"] = merging
        run.steps = sum(len(graph.steps) for graph, _ in graphs)
        run.before_merging = bounded
    picked, status, gap = run.solve(time_limit, given, engines)
    selections = None if picked is None else [
        {(name, phase): o for name, c in series_parallel.expand(one).items()
         for phase, o in c.parts} for one in picked]
    return JointResult(selections, status, time.perf_counter() - started, len(b.cost),
                       len(b.rows), gap, run.stats())


def _reduce(
    graph: GraphModel, options: Mapping[str, StepOptions], snapshot: ClusterSnapshot
) -> dict[str, list[Config]]:
    """The two exact reductions of ``bounds``: drop too-slow configurations, fix slack steps."""
    if not all(so.configs for so in options.values()):
        return {name: so.configs for name, so in options.items()}
    capped = set(snapshot.capacities())
    fastest = {name: min(c.latency for c in so.configs) for name, so in options.items()}
    cheapest = {name: min(so.configs, key=lambda c: (c.objective, c.latency))
                for name, so in options.items()}
    room_fast = bounds.latency_caps(graph, fastest)
    room_cheap = bounds.latency_caps(graph, {n: c.latency for n, c in cheapest.items()})
    out = {}
    for name, so in options.items():
        c0 = cheapest[name]
        if (c0.latency <= room_cheap[name] * (1 + SLACK_TOL)
                and not any(p in capped for c in so.configs for p, _ in c.usage)):
            out[name] = [c0]
            continue
        cap = room_fast[name] * (1 + SLACK_TOL) + 1e-12
        out[name] = [c for c in so.configs if c.latency <= cap]
    return out


class _Run:
    """One MILP: the LP bound, a first incumbent, reduced-cost fixing, then the race."""

    def __init__(self, b: lp.Builder, problems: Sequence[_Problem], limits: Mapping[str, float],
                 scale: float, started: float, configurations: int) -> None:
        self.b = b
        self.problems = problems
        self.limits = limits
        self.scale = scale
        self.started = started
        self.configurations = configurations
        self.n = len(b.cost)
        self.cost = np.array(b.cost)
        self.integer = np.array(b.integer, dtype=bool)
        self.upper = np.array(b.upper)
        self.integrality = [highspy.HighsVarType.kInteger if i
                            else highspy.HighsVarType.kContinuous for i in self.integer]
        self.lp_bound: float | None = None
        self.start_value: float | None = None
        self.start_from = "none"
        self.kept = sum(len(cols) for p in problems for cols in p.columns.values())
        self.fixed_steps = 0
        # Set when the model is the merged one: the steps, and their configurations left by
        # the bounds before merging.
        self.steps = 0
        self.before_merging: int | None = None
        self.nodes = 0
        self.seconds: dict[str, float] = {"build": time.perf_counter() - started}
        self.lp = lp.highs_lp(b)

    def solve(
        self, time_limit: float, starts: Sequence[Mapping[str, Config] | None] | None,
        engines: Sequence[str],
    ) -> tuple[list[dict[str, Config]] | None, str, float | None]:
        t = time.perf_counter()
        relaxed = self._relaxation(time_limit)
        self.seconds["lp"] = time.perf_counter() - t
        if relaxed == "infeasible":
            return None, "infeasible", None
        t = time.perf_counter()
        start = None
        upper = self.upper.copy()
        if isinstance(relaxed, tuple):  # None: no LP optimum in time; the MILP goes on without
            x, reduced = relaxed
            start = self._start(x, starts, min(NEIGHBOURHOOD_SECONDS, time_limit / 10))
            if start is not None:
                upper = self._fix(upper, reduced, start)
        self.seconds["start"] = time.perf_counter() - t
        t = time.perf_counter()
        answer = self._milp(upper, start, max(time_limit - (t - self.started), 1e-6), engines)
        self.seconds["milp"] = time.perf_counter() - t
        return answer

    def _relaxation(self, time_limit: float) -> tuple[np.ndarray, np.ndarray] | str | None:
        h = lp.quiet_highs()
        h.setOptionValue("time_limit", float(time_limit))
        h.passModel(self.lp)
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return "infeasible"  # no fractional plan, so no plan
        if status != highspy.HighsModelStatus.kOptimal:
            return None
        solution = h.getSolution()
        self.lp_bound = h.getInfo().objective_function_value * self.scale
        return np.array(solution.col_value), np.array(solution.col_dual)

    def _start(
        self, x: np.ndarray, starts: Sequence[Mapping[str, Config] | None] | None,
        time_limit: float,
    ) -> list[dict[str, Config]] | None:
        """A feasible plan to begin from, the cheapest of these, each then improved step by
        step (``_improve``):
        - the given one (the running plan), where it is feasible;
        - the LP's solution with every step at the fastest configuration it uses: durations
          only shrink, so every latency row still holds;
        - the MILP over only the configurations the LP solution uses (RENS): few steps are
          fractional, so it is small and solves in tens of milliseconds at 500 steps.
        None when none of them fits the pools' capacity."""
        found: list[tuple[float, str, list[dict[str, Config]]]] = []
        if starts is not None:
            given = [None if wanted is None else _known(problem.usable, wanted)
                     for problem, wanted in zip(self.problems, starts, strict=True)]
            if all(pick is not None and _meets_sla(problem.graph, pick)
                   for problem, pick in zip(self.problems, given, strict=True)):
                found.append(self._improved([p for p in given if p is not None],
                                            "running plan"))
        rounded = [{name: min((c for col, c in cols if x[col] > SUPPORT),
                              key=lambda c: (c.latency, c.objective),
                              default=min((c for _, c in cols), key=lambda c: c.latency))
                    for name, cols in problem.columns.items()} for problem in self.problems]
        if self._meet_sla(rounded):
            found.append(self._improved(rounded, "heuristic"))  # (checked: LP tolerances)
        near = self._neighbourhood(x, time_limit)
        if near is not None:
            found.append(self._improved(near, "heuristic"))
        found = [f for f in found if self._within_capacity(f[2])]
        if not found:
            return None
        value, origin, picks = min(found, key=lambda f: f[0])  # ties: the running plan
        self.start_from, self.start_value = origin, value
        return picks

    def _improved(self, picks: list[dict[str, Config]], origin: str
                  ) -> tuple[float, str, list[dict[str, Config]]]:
        out: list[dict[str, Config]] = []
        for problem, pick in zip(self.problems, picks, strict=True):
            mine = dict(pick)
            out.append(_improve(problem, mine, self.limits, self._usage([*out, mine])))
        return sum(c.objective for pick in out for c in pick.values()), origin, out

    def _neighbourhood(self, x: np.ndarray, time_limit: float) -> list[dict[str, Config]] | None:
        """The MILP restricted to the LP solution's support; None without a plan in time."""
        upper = self.upper.copy()
        upper[self.integer & (x <= SUPPORT)] = 0.0
        h = self._mip(upper, time_limit)
        h.run()
        if h.getInfo().primal_solution_status != 2:
            return None
        picks = self._picks(np.array(h.getSolution().col_value))
        # Checked, not trusted: the fixing that follows is exact only from a feasible plan.
        return picks if self._meet_sla(picks) else None

    def _picks(self, x: np.ndarray) -> list[dict[str, Config]]:
        """Per graph, each step's configuration with the largest value in ``x``."""
        return [{name: max(cols, key=lambda cc: x[cc[0]])[1] for name, cols in p.columns.items()}
                for p in self.problems]

    def _meet_sla(self, picks: Sequence[Mapping[str, Config]]) -> bool:
        return all(_meets_sla(p.graph, pick)
                   for p, pick in zip(self.problems, picks, strict=True))

    def _usage(self, picks: Sequence[Mapping[str, Config]]) -> dict[str, float]:
        """Units and pods the plans hold in each capacity-limited pool, summed."""
        used: dict[str, float] = {}
        for pick in picks:
            for c in pick.values():
                for key, units in c.usage:
                    if key in self.limits:
                        used[key] = used.get(key, 0.0) + units
        return used

    def _within_capacity(self, picks: Sequence[Mapping[str, Config]]) -> bool:
        used = self._usage(picks)
        return all(used.get(key, 0.0) <= limit * (1 + SLACK_TOL) + 1e-9
                   for key, limit in self.limits.items())

    def _columns_of(self, picks: Sequence[Mapping[str, Config]]) -> set[int]:
        """The column of each step's pick (steps alike may share configuration objects, so
        the match is made within each step's own columns)."""
        return {next(col for col, c in cols if c is pick[name])
                for p, pick in zip(self.problems, picks, strict=True)
                for name, cols in p.columns.items()}

    def _fix(self, upper: np.ndarray, reduced: np.ndarray,
             start: Sequence[Mapping[str, Config]]) -> np.ndarray:
        """Reduced-cost fixing: with an optimal LP dual, any plan using column j costs at least
        lp_bound + reduced[j] (scaled), so a column whose reduced cost exceeds the gap to the
        start's cost is in no plan cheaper than the start."""
        assert self.lp_bound is not None and self.start_value is not None
        gap = (self.start_value - self.lp_bound) / self.scale
        slack = gap + FIX_TOL * max(1.0, abs(self.start_value / self.scale))
        chosen = self._columns_of(start)
        kept = 0
        for problem in self.problems:
            for cols in problem.columns.values():
                left = 0
                for col, _ in cols:
                    if reduced[col] > slack and col not in chosen:
                        upper[col] = 0.0
                    else:
                        left += 1
                kept += left
                self.fixed_steps += left == 1
        self.kept = kept
        return upper

    def _milp(
        self, upper: np.ndarray, start: Sequence[Mapping[str, Config]] | None,
        time_limit: float, engines: Sequence[str],
    ) -> tuple[list[dict[str, Config]] | None, str, float | None]:
        """Race HiGHS's branch and bound (in a thread: it releases the GIL) against ours
        (``branch``, here); the first to prove its plan within the gap stops the other. Both
        are exact, so the answer is the cheaper plan, and the higher of their two lower bounds
        bounds it."""
        stop = threading.Event()
        deadline = time.perf_counter() + time_limit
        chosen = None if start is None else self._columns_of(start)
        ours: list[branch.Answer] = []
        theirs: list[_HighsAnswer] = []
        worker = None
        if "highs" in engines:
            highs = self._highs_milp(upper, time_limit, stop)
            worker = threading.Thread(target=lambda: theirs.append(_finish(highs, stop)),
                                      name="highs", daemon=True)
            worker.start()
        if "branch" in engines:
            ours.append(self._branch(upper, chosen, deadline, stop))
            if ours[0].proven:
                stop.set()
        if worker is not None:
            worker.join()
        self.nodes = sum(a.nodes for a in ours) + sum(a.nodes for a in theirs)
        plans: list[tuple[float, np.ndarray]] = []
        if chosen is not None:  # the first plan is feasible (checked): never answer worse
            x = np.zeros(self.n)
            x[list(chosen)] = 1.0
            plans.append((float(self.cost @ x), x))
        bound = -INF
        infeasible = False
        for a in theirs:
            infeasible |= a.infeasible
            bound = max(bound, a.bound)
            if a.x is not None:
                plans.append((float(self.cost @ a.x), a.x))
        for b_ in ours:
            bound = max(bound, b_.bound)
            if b_.chosen is not None:
                x = np.zeros(self.n)
                x[b_.chosen] = 1.0
                plans.append((b_.value, x))
            elif not np.isfinite(b_.bound):
                infeasible = True
        if not plans:
            return None, "infeasible" if infeasible else "no solution (time limit)", None
        value, x = min(plans, key=lambda p: p[0])
        picked = self._picks(x)
        gap = max((value - bound) / max(abs(value), 1e-12), 0.0) if np.isfinite(bound) else None
        if gap is not None and gap <= MIP_REL_GAP * (1 + 1e-9):
            return picked, "optimal", gap
        within = f": within {gap:.3%} of the lower bound" if gap is not None else ""
        return picked, f"time limit{within}", gap

    def _mip(self, upper: np.ndarray, time_limit: float) -> highspy.Highs:
        """A HiGHS holding the MILP with these column bounds, not yet run."""
        h = lp.quiet_highs()
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
        model = self.lp
        model.col_upper_ = lp.infinite(upper)
        model.integrality_ = self.integrality
        h.passModel(model)
        model.integrality_ = []  # the LP is shared with the relaxations
        return h

    def _highs_milp(self, upper: np.ndarray, time_limit: float,
                    stop: threading.Event) -> highspy.Highs:
        h = self._mip(upper, time_limit)
        # No setSolution: given a start, partial (the binaries) or complete (finish times
        # too), HiGHS 1.16 returned the start as its solution, with an objective and a bound
        # below the LP relaxation's. The start still serves, through reduced-cost fixing and
        # as our own search's incumbent.

        def interrupt(event: Any) -> None:
            if stop.is_set():
                event.interrupt()

        h.cbMipInterrupt += interrupt
        return h

    def _branch(self, upper: np.ndarray, given: set[int] | None, deadline: float,
                stop: threading.Event) -> branch.Answer:
        # Its LP holds only the columns left: every finish time, and each configuration not
        # fixed away (at 500 steps, about a third). ``where``: a column's index there.
        left = ~self.integer | (upper > 0)
        where = np.cumsum(left) - 1
        groups = []
        for p in self.problems:
            for cols in p.columns.values():
                kept = sorted(((c.latency, c.objective, col) for col, c in cols
                               if upper[col] > 0), key=lambda t: (t[0], t[1]))
                groups.append(branch.Group(np.array([where[t[2]] for t in kept], dtype=np.int64),
                                           np.array([t[0] for t in kept])))
        h = lp.quiet_highs()
        model = self.lp
        model.col_upper_ = lp.infinite(upper)
        h.passModel(lp.select_columns(model, left))
        cost = self.cost[left]
        incumbent = None
        if given is not None:  # its columns are never fixed away
            mine = {int(where[c]) for c in given}
            chosen = np.array([next(c for c in g.columns if c in mine) for g in groups])
            incumbent = (chosen, float(cost[chosen].sum()))
        answer = branch.search(h, groups, cost, upper[left], incumbent,
                               rounding=not self.limits, gap=MIP_REL_GAP, deadline=deadline,
                               stop=stop,
                               improve=None if self.limits else self._improver(upper, where))
        if answer.chosen is None:
            return answer
        return replace(answer, chosen=np.flatnonzero(left)[answer.chosen])

    def _improver(self, upper: np.ndarray, where: np.ndarray
                  ) -> Callable[[np.ndarray], np.ndarray]:
        """``_improve`` for our search: a column per step (in its groups' order, numbered as
        its LP numbers them) -> the plan improved step by step among the columns left."""
        problems = [_Problem(p.graph, {name: [c for col, c in cols if upper[col] > 0]
                                       for name, cols in p.columns.items()}, {})
                    for p in self.problems]
        at: dict[int, tuple[int, str, Config]] = {}
        column: list[dict[tuple[str, int], int]] = [{} for _ in problems]
        for pi, p in enumerate(self.problems):
            for name, cols in p.columns.items():
                for col, c in cols:
                    if upper[col] > 0:
                        at[int(where[col])] = (pi, name, c)
                        column[pi][(name, id(c))] = int(where[col])

        def improve(chosen: np.ndarray) -> np.ndarray:
            picks: list[dict[str, Config]] = [{} for _ in problems]
            for col in chosen.tolist():
                pi, name, c = at[col]
                picks[pi][name] = c
            better = [_improve(p, pick, {}, {}) for p, pick in zip(problems, picks, strict=True)]
            return np.array([column[pi][(name, id(c))] for pi, pick in enumerate(better)
                             for name, c in pick.items()], dtype=np.int64)

        return improve

    def stats(self) -> SolveStats:
        columns = sum(len(cols) for p in self.problems for cols in p.columns.values())
        merged = self.before_merging is not None
        return SolveStats(configurations=self.configurations,
                          after_bounds=self.before_merging if merged else columns,
                          steps=self.steps if merged else None,
                          choices=sum(len(p.columns) for p in self.problems) if merged else None,
                          after_merging=columns if merged else None,
                          after_fixing=self.kept, steps_fixed=self.fixed_steps,
                          rows=len(self.b.rows), lp_bound=self.lp_bound,
                          start=self.start_value, start_from=self.start_from, nodes=self.nodes,
                          seconds=dict(self.seconds))


def _known(usable: Mapping[str, Sequence[Config]], wanted: Mapping[str, Config]
           ) -> dict[str, Config] | None:
    """``wanted`` as each step's own usable configurations, or None where one is not."""
    out = {}
    for name, mine in usable.items():
        c = wanted.get(name)
        found = next((u for u in mine if c is not None and u == c), None)
        if found is None:
            return None
        out[name] = found
    return out


def _fits(duration: float, room: float) -> bool:
    return duration <= room * (1 + SLACK_TOL) + 1e-12


def _meets_sla(graph: GraphModel, pick: Mapping[str, Config]) -> bool:
    durations = {name: c.latency for name, c in pick.items()}
    room = bounds.latency_caps(graph, durations)
    return all(_fits(durations[name], room[name]) for name in durations)


def _improve(problem: _Problem, pick: dict[str, Config], limits: Mapping[str, float],
             used: dict[str, float]) -> dict[str, Config]:
    """Greedy descent that keeps the plan feasible: each step, largest possible saving first,
    moves to its cheapest configuration that fits the room the others leave it (and the pools'
    capacity); the room is recomputed after every move."""
    graph = problem.graph
    durations = {name: c.latency for name, c in pick.items()}
    room = bounds.latency_caps(graph, durations)
    for _ in range(IMPROVE_PASSES):
        moved = False
        order = sorted(problem.usable, key=lambda n: min(c.objective for c in problem.usable[n])
                       - pick[n].objective)
        for name in order:
            if len(problem.usable[name]) == 1:
                continue
            here = pick[name]
            best = min((c for c in problem.usable[name]
                        if _fits(c.latency, room[name]) and _room_for(c, here, limits, used)),
                       key=lambda c: (c.objective, c.latency), default=here)
            if best.objective < here.objective * (1 - 1e-12) - 1e-15:
                for key, units in here.usage:
                    if key in used:
                        used[key] -= units
                for key, units in best.usage:
                    if key in limits:
                        used[key] = used.get(key, 0.0) + units
                pick[name] = best
                durations[name] = best.latency
                room = bounds.latency_caps(graph, durations)
                moved = True
        if not moved:
            break
    return pick


def _room_for(c: Config, here: Config, limits: Mapping[str, float],
              used: Mapping[str, float]) -> bool:
    if not limits:
        return True
    delta: dict[str, float] = {}
    for key, units in c.usage:
        delta[key] = delta.get(key, 0.0) + units
    for key, units in here.usage:
        delta[key] = delta.get(key, 0.0) - units
    return all(used.get(key, 0.0) + d <= limits[key] * (1 + SLACK_TOL) + 1e-9
               for key, d in delta.items() if key in limits and d > 0)


@dataclass(frozen=True)
class _HighsAnswer:
    x: np.ndarray | None  # its best plan's columns; None: none found
    bound: float  # its proven lower bound (scaled objective)
    infeasible: bool
    nodes: int


def _finish(h: highspy.Highs, stop: threading.Event) -> _HighsAnswer:
    """Run HiGHS to its end (proven, out of time, or interrupted) and tell the other engine."""
    h.run()
    stop.set()
    info = h.getInfo()
    status = h.getModelStatus()
    x = np.array(h.getSolution().col_value) if info.primal_solution_status == 2 else None
    bound = float(info.mip_dual_bound)
    if x is not None and not math.isclose(float(np.array(h.getLp().col_cost_) @ x),
                                          float(info.objective_function_value),
                                          rel_tol=1e-7, abs_tol=1e-9):
        bound = -INF  # its figures disagree with its own solution: trust neither bound nor status
        return _HighsAnswer(x, bound, False, int(info.mip_node_count))
    if status == highspy.HighsModelStatus.kOptimal and x is not None:
        bound = max(bound, float(info.objective_function_value) * (1 - MIP_REL_GAP))
    return _HighsAnswer(x, bound if math.isfinite(bound) else -INF,
                        status == highspy.HighsModelStatus.kInfeasible,
                        int(info.mip_node_count))
