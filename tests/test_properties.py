"""Invariants on random graphs: the plan meets what it reports; the MILP equals brute force."""

import itertools
import math
from typing import Any

import networkx as nx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import Plan
from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates, milp, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import compute, llm, make_graph, make_pool, tool

SMALL = CostSettings(tensor_parallel=(1, 2), prefill_batches=(1, 4), decode_batches=(1, 8, 32),
                     small_model_batches=(1, 8), cpu_cores=(1, 2, 4))
TOL = 1e-6
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[AgentGraph, list[HardwareProfile]]:
    pools = []
    for i in range(draw(st.integers(1, 3))):
        cpu = i > 0 and draw(st.booleans())
        pools.append(make_pool(
            f"p{i}", cpu=cpu, price=draw(st.sampled_from([0.3, 1.0, 2.5])),
            tflops=draw(st.sampled_from([100, 400, 1500])),
            bandwidth=draw(st.sampled_from([300, 2000, 6000])),
            memory=draw(st.sampled_from([24, 80, 192])),
            nodes=draw(st.none() | st.integers(1, 2)), cores=16, max_tp=2))
    steps: list[dict[str, Any]] = []
    loops = []
    has_llm = False
    for i in range(draw(st.integers(1, 4))):
        name = f"s{i}"
        deps = draw(st.lists(st.sampled_from([s["name"] for s in steps]), unique=True,
                             max_size=2)) if steps else []
        kind = draw(st.sampled_from(["tool", "compute"] if has_llm else
                                    ["tool", "compute", "llm"]))
        if kind == "tool":
            steps.append(tool(name, latency=draw(st.sampled_from([0.05, 0.3, 1.0])), deps=deps))
        elif kind == "compute":
            steps.append(compute(name, core_seconds=draw(st.sampled_from([0.1, 0.8, 3.0])),
                                 deps=deps, max_cores=4))
        else:
            has_llm = True
            steps.append(llm(name, deps=deps,
                             input_tokens=draw(st.sampled_from([256, 2048])),
                             output_tokens=draw(st.sampled_from([32, 256]))))
        if kind != "llm" and not loops and draw(st.booleans()):
            steps[-1]["dependsOn"].append(name)  # a one-step loop: the step feeds itself
            loops.append({"steps": [name], "expectedIterations": draw(st.sampled_from([1, 2.5])),
                          "maxIterations": 4})
    rate = draw(st.none() | st.sampled_from([0.5, 4.0, 30.0]))
    extra = {"ttftSeconds": draw(st.sampled_from([0.3, 2.0]))} if has_llm and draw(
        st.booleans()) else {}
    graph = make_graph(steps, sla=draw(st.sampled_from([0.5, 2.0, 8.0, 40.0])), rate=rate,
                       loops=loops, **extra)
    return graph, pools


def oracle_latency(graph: AgentGraph, plan: Plan) -> float:
    """Longest path recomputed from the plan's own numbers, with networkx, loops expanded."""
    loops = {lp.steps[0]: lp.expected_iterations for lp in graph.spec.loops}
    duration: dict[str, float] = {}
    for a in plan.assignments:
        duration[a.step] = duration.get(a.step, 0.0) + a.latency_seconds
    for t in plan.transfers:
        duration[t.step] += t.latency_seconds
    g = nx.DiGraph()
    for s in graph.spec.steps:
        g.add_node(s.name, w=duration[s.name] * loops.get(s.name, 1.0))
        g.add_edges_from((d, s.name) for d in s.depends_on if d != s.name)
    finish: dict[str, float] = {}
    for n in nx.topological_sort(g):
        finish[n] = max((finish[p] for p in g.predecessors(n)), default=0.0) + g.nodes[n]["w"]
    return max(finish.values())


@PROPERTY
@given(scenarios())
def test_plan_meets_every_constraint_it_reports(case: tuple[AgentGraph, list[Any]]) -> None:
    graph, pools = case
    plan = solve.plan(graph, pools, SMALL)
    if not plan.feasible:
        assert plan.reasons, "an infeasible plan must say why"
        return
    sla = graph.spec.sla
    assert plan.latency_seconds is not None
    assert math.isclose(oracle_latency(graph, plan), plan.latency_seconds, rel_tol=1e-9)
    assert plan.latency_seconds <= sla.latency_seconds * (1 + TOL)
    visits = {lp.steps[0]: lp.expected_iterations for lp in graph.spec.loops}
    by_pool: dict[str, float] = {}
    for a in plan.assignments:
        by_pool[a.pool] = by_pool.get(a.pool, 0.0) + a.replicas * a.units_per_replica
        if sla.target_requests_per_second:  # enough replicas for the rate at the cap
            capacity = a.replicas * a.batch / a.latency_seconds * 0.7
            assert capacity >= sla.target_requests_per_second * visits.get(a.step, 1) * (1 - TOL)
    for p in pools:
        if p.spec.pool.nodes is not None:
            per_node = p.spec.cores if p.spec.device_type == "cpu" else 8
            assert by_pool.get(p.name, 0.0) <= p.spec.pool.nodes * per_node * (1 + TOL)
    for c in plan.constraints:
        assert c.value <= c.limit * (1 + TOL), c
    if sla.ttft_seconds is not None:
        ttft = next(c for c in plan.constraints if c.name.startswith("ttft:"))
        assert ttft.value <= sla.ttft_seconds * (1 + TOL)


Unpruned = tuple[graph_model.GraphModel, ClusterSnapshot, dict[str, candidates.StepOptions],
                 list[tuple[str, Any]], list[list[candidates.Option]]]


def unpruned(graph: AgentGraph, pools: list[HardwareProfile], most: int) -> Unpruned:
    """Every option of every step phase, unpruned, for a brute force of at most ``most``
    selections (hypothesis drops the larger cases)."""
    model = graph_model.build(graph)
    snapshot = ClusterSnapshot.from_profiles(pools, SMALL)
    options = candidates.build(model, snapshot, SMALL, prune=False)
    slots = [(name, phase) for name, so in options.items() for phase in so.slots]
    choices = [options[n].slots[p] for n, p in slots]
    assume(all(choices) and math.prod(len(c) for c in choices) <= most)
    return model, snapshot, options, slots, choices


def brute_force(model: graph_model.GraphModel, snapshot: ClusterSnapshot,
                options: dict[str, candidates.StepOptions], slots: list[tuple[str, Any]],
                choices: list[list[candidates.Option]]) -> float:
    """The cheapest feasible selection's objective, scored by ``evaluate``; inf without one."""
    best = math.inf
    for combo in itertools.product(*choices):
        ev = evaluate(model, options, dict(zip(slots, combo, strict=True)), snapshot)
        if ev.feasible:
            best = min(best, ev.objective)
    return best


def assert_planned_at(graph: AgentGraph, pools: list[HardwareProfile], best: float) -> None:
    """The plan costs what the brute force found, or there is none when it found none."""
    plan = solve.plan(graph, pools, SMALL)
    if math.isinf(best):
        assert not plan.feasible
    else:
        assert plan.feasible, plan.reasons
        assert plan.objective is not None
        assert math.isclose(plan.objective.value, best, rel_tol=TOL), (plan.objective.value, best)


@PROPERTY
@given(scenarios())
def test_milp_cost_equals_brute_force(case: tuple[AgentGraph, list[Any]]) -> None:
    graph, pools = case
    assert_planned_at(graph, pools, brute_force(*unpruned(graph, pools, 3000)))


@PROPERTY
@given(scenarios(), st.data())
def test_start_and_reduced_cost_fixing_keep_the_optimum(
    case: tuple[AgentGraph, list[Any]], data: st.DataObject
) -> None:
    """The MILP's first incumbent (a given plan, feasible or not, or its own heuristic), the
    reduced-cost fixing it allows and each exact engine (HiGHS, our branch and bound, the two
    raced) never lose the optimum: brute force over whole configurations agrees."""
    graph, pools = case
    model = graph_model.build(graph)
    snapshot = ClusterSnapshot.from_profiles(pools, SMALL)
    options = candidates.build(model, snapshot, SMALL)
    configs = [options[name].configs for name in options]
    assume(all(configs) and math.prod(len(c) for c in configs) <= 3000)
    best = math.inf
    for combo in itertools.product(*configs):
        selection = {(name, phase): o for name, c in zip(options, combo, strict=True)
                     for phase, o in c.parts}
        ev = evaluate(model, options, selection, snapshot)
        if ev.feasible:
            best = min(best, ev.objective)
    start = {name: data.draw(st.sampled_from(options[name].configs)) for name in options}
    runs = [(given, engines) for given in (None, start)
            for engines in (milp.ENGINES, ("highs",), ("branch",))]
    for given_start, engines in runs:
        result = milp.solve(model, options, snapshot, start=given_start, engines=engines)
        if math.isinf(best):
            assert result.selection is None
            continue
        assert result.selection is not None and result.stats is not None
        ev = evaluate(model, options, result.selection, snapshot)
        assert ev.feasible, ev.violations
        assert math.isclose(ev.objective, best, rel_tol=TOL), (ev.objective, best)
        stats = result.stats
        assert stats.after_fixing <= stats.after_bounds <= stats.configurations
        if stats.start is not None:  # a feasible plan: never below the optimum or the LP bound
            assert stats.start >= best * (1 - TOL)
            assert stats.lp_bound is not None and stats.lp_bound <= best * (1 + TOL)


@st.composite
def loop_scenarios(draw: st.DrawFn) -> tuple[AgentGraph, list[HardwareProfile]]:
    """Steps before a loop of 2-4 steps (head first), the loop, steps after it that hang off
    any of its steps; integer iterations so the loop can be unrolled."""
    steps: list[dict[str, Any]] = []
    def add(name: str, deps: list[str]) -> None:
        if draw(st.booleans()):
            steps.append(tool(name, latency=draw(st.sampled_from([0.05, 0.2, 0.7])), deps=deps))
        else:
            steps.append(compute(name, core_seconds=draw(st.sampled_from([0.1, 0.8, 2.0])),
                                 deps=deps, max_cores=4))
    before = [f"b{i}" for i in range(draw(st.integers(0, 2)))]
    for i, name in enumerate(before):
        add(name, draw(st.lists(st.sampled_from(before[:i]), unique=True)) if i else [])
    rest = [f"r{i}" for i in range(draw(st.integers(1, 3)))]
    add("h", draw(st.lists(st.sampled_from(before), unique=True)) if before else [])
    for i, name in enumerate(rest):
        inside = ["h", *rest[:i]]
        add(name, draw(st.lists(st.sampled_from(inside), min_size=1, unique=True))
            + (draw(st.lists(st.sampled_from(before), unique=True, max_size=1)) if before else []))
    feeding = draw(st.lists(st.sampled_from(rest), min_size=1, unique=True))
    steps[len(before)]["dependsOn"] = [*steps[len(before)]["dependsOn"], *feeding]
    members = ["h", *rest]
    after = [f"a{i}" for i in range(draw(st.integers(0, 2)))]
    for name in after:
        add(name, draw(st.lists(st.sampled_from(members + before), min_size=1, unique=True)))
    expected = draw(st.integers(1, 3))
    loops = [{"steps": members, "expectedIterations": expected,
              "maxIterations": draw(st.integers(max(expected, 2), 4))}]
    pools = [make_pool("cpu", cpu=True, price=1.0, cores=16),
             make_pool("big", cpu=True, price=draw(st.sampled_from([0.5, 2.0])), cores=64)]
    graph = make_graph(steps, sla=draw(st.sampled_from([1.0, 3.0, 8.0, 30.0])), loops=loops)
    return graph, pools


def unrolled(graph: AgentGraph, duration: dict[str, float], iterations: int
             ) -> tuple[float, dict[str, int]]:
    """The runtime's walk written out as one DAG: iteration i runs the heads together, and all
    but the last then run the rest of the body; the next iteration waits for all of it. The
    longest path with networkx, and how often each step runs."""
    [loop] = graph.spec.loops
    members = set(loop.steps)
    deps = {s.name: set(s.depends_on) for s in graph.spec.steps}
    back = {(u, loop.steps[0]) for u in deps[loop.steps[0]] & members}
    body = {m: {d for d in deps[m] & members if (d, m) not in back} for m in members}
    heads = [m for m in loop.steps if not body[m]]
    rest = [m for m in loop.steps if body[m]]
    outside = {d for m in members for d in deps[m] - members}
    g = nx.DiGraph()
    for i in range(iterations):
        for h in heads:
            g.add_node((h, i), w=duration[h])
            for d in (outside if i == 0 else [(r, i - 1) for r in rest]):
                g.add_edge(d, (h, i))
        if i < iterations - 1:
            for r in rest:
                g.add_node((r, i), w=duration[r])
                g.add_edges_from(((h, i), (r, i)) for h in heads)
                g.add_edges_from(((p, i), (r, i)) for p in body[r] if p in rest)
    for s in graph.spec.steps:
        if s.name in members:
            continue
        g.add_node(s.name, w=duration[s.name])
        for d in deps[s.name]:
            g.add_edges_from([(n, s.name) for n in list(g.nodes) if isinstance(n, tuple)]
                             if d in members else [(d, s.name)])
    finish: dict[Any, float] = {}
    for n in nx.topological_sort(g):
        finish[n] = max((finish[p] for p in g.predecessors(n)), default=0.0) + g.nodes[n]["w"]
    runs: dict[str, int] = {}
    for n in g.nodes:
        name = n[0] if isinstance(n, tuple) else n
        runs[name] = runs.get(name, 0) + 1
    return max(finish.values()), runs


@PROPERTY
@given(loop_scenarios())
def test_loop_exit_matches_the_unrolled_graph(case: tuple[AgentGraph, list[Any]]) -> None:
    """Latency at expected and at maximum iterations, and the cheapest plan, equal a brute
    force over the unrolled DAG: the graph leaves a loop at its heads."""
    graph, pools = case
    [loop] = graph.spec.loops
    model, snapshot, options, slots, choices = unpruned(graph, pools, 4000)
    best = math.inf
    for combo in itertools.product(*choices):
        selection = dict(zip(slots, combo, strict=True))
        duration = {n: o.estimate.latency for (n, _), o in selection.items()}
        latency, runs = unrolled(graph, duration, int(loop.expected_iterations))
        worst, _ = unrolled(graph, duration, loop.max_iterations)
        ev = evaluate(model, options, selection, snapshot)
        assert math.isclose(ev.latency, latency, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(ev.worst_latency, worst, rel_tol=1e-9, abs_tol=1e-12)
        cost = sum(o.estimate.cost_per_request * runs.get(n, 0) for (n, _), o in selection.items())
        assert math.isclose(ev.objective, cost, rel_tol=1e-9, abs_tol=1e-15)
        if latency <= graph.spec.sla.latency_seconds * (1 + 1e-9):
            best = min(best, cost)
    assert_planned_at(graph, pools, best)
