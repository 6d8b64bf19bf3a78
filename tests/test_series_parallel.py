"""Series-parallel merging (planner/series_parallel.py): exact on random graphs against brute
force, every merged option is what it claims once expanded, a running plan lifts to an option
at least as good, and the shapes that merge (and the one that cannot)."""

import math
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.planner import candidates, milp, series_parallel, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.evaluate import evaluate, longest_path
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import compute, llm, make_graph, make_pool, tool
from test_properties import PROPERTY, SMALL, assert_planned_at, brute_force, unpruned

POOLS = [make_pool("cpu", cpu=True, price=1.0, cores=16),
         make_pool("fast", cpu=True, price=2.5, cores=64),
         make_pool("gpu", price=1.5, tflops=400, bandwidth=2000, memory=80, max_tp=2)]


@st.composite
def dags(draw: st.DrawFn, most: int = 6) -> tuple[AgentGraph, list[HardwareProfile]]:
    """2 to ``most`` steps, each after up to two earlier ones; now and then a self-loop or a
    two-step loop (a step and its critic), and at most one LLM step."""
    steps: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    has_llm = False
    for i in range(draw(st.integers(2, most))):
        name = f"s{i}"
        earlier = [s["name"] for s in steps if not any(s["name"] in lp["steps"][1:]
                                                       for lp in loops)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        kind = draw(st.sampled_from(["tool", "compute"] if has_llm else ["tool", "compute", "llm"]))
        if kind == "tool":
            steps.append(tool(name, latency=draw(st.sampled_from([0.05, 0.3, 1.0])), deps=deps))
        elif kind == "compute":
            steps.append(compute(name, core_seconds=draw(st.sampled_from([0.1, 0.8, 3.0])),
                                 deps=deps, max_cores=4))
        else:
            has_llm = True
            steps.append(llm(name, deps=deps, input_tokens=draw(st.sampled_from([256, 2048])),
                             output_tokens=32))
        if kind != "llm" and not loops and draw(st.integers(0, 3)) == 0:
            if draw(st.booleans()):  # the step feeds itself
                steps[-1]["dependsOn"].append(name)
                loops.append({"steps": [name], "expectedIterations": 2, "maxIterations": 3})
            else:  # a critic after it, feeding it again
                critic = f"{name}c"
                steps.append(tool(critic, latency=draw(st.sampled_from([0.05, 0.3])),
                                  deps=[name]))
                steps[-2]["dependsOn"].append(critic)
                loops.append({"steps": [name, critic], "expectedIterations": 2,
                              "maxIterations": 3})
    graph = make_graph(steps, sla=draw(st.sampled_from([0.6, 2.0, 5.0, 12.0])),
                       rate=draw(st.none() | st.sampled_from([1.0, 20.0])), loops=loops)
    return graph, POOLS


def _model(graph: AgentGraph) -> tuple[graph_model.GraphModel, ClusterSnapshot,
                                        dict[str, candidates.StepOptions]]:
    model = graph_model.build(graph)
    snapshot = ClusterSnapshot.from_profiles(POOLS, SMALL)
    return model, snapshot, candidates.build(model, snapshot, SMALL)


@PROPERTY
@given(dags())
def test_merged_plan_equals_brute_force(case: tuple[AgentGraph, list[Any]]) -> None:
    """No pool is limited, so every plan here is made on the merged model."""
    graph, pools = case
    assert_planned_at(graph, pools, brute_force(*unpruned(graph, pools, 4000)))


@PROPERTY
@given(dags(most=8), st.data())
def test_every_merged_option_is_what_it_claims(case: tuple[AgentGraph, list[Any]],
                                               data: st.DataObject) -> None:
    """Any option of every choice, expanded to one configuration per step, has exactly the
    duration and cost the reduced model gives it."""
    graph, _ = case
    model, snapshot, options = _model(graph)
    assume(all(so.configs for so in options.values()))
    reduced = series_parallel.reduce(model, {n: so.configs for n, so in options.items()})
    assume(all(reduced.options.values()))  # (an option too slow for the SLA is dropped)
    pick = {name: data.draw(st.sampled_from(opts)) for name, opts in reduced.options.items()}
    steps = series_parallel.expand(pick)
    assert sorted(steps) == sorted(model.steps)
    selection = {(name, phase): o for name, c in steps.items() for phase, o in c.parts}
    ev = evaluate(model, options, selection, snapshot)
    latency, _ = longest_path(reduced.graph, {n: c.latency for n, c in pick.items()}, False)
    assert math.isclose(ev.latency, latency, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(ev.objective, sum(c.objective for c in pick.values()), rel_tol=1e-9)


@PROPERTY
@given(dags(), st.data())
def test_a_running_plan_lifts_to_an_option_at_least_as_good(
        case: tuple[AgentGraph, list[Any]], data: st.DataObject) -> None:
    graph, _ = case
    model, snapshot, options = _model(graph)
    assume(all(so.configs for so in options.values()))
    usable = {n: so.configs for n, so in options.items()}
    reduced = series_parallel.reduce(model, usable)
    assume(all(reduced.options.values()))
    running = {n: data.draw(st.sampled_from(cs)) for n, cs in usable.items()}
    before = evaluate(model, options, {(n, p): o for n, c in running.items()
                                       for p, o in c.parts}, snapshot)
    lifted = series_parallel.lift(reduced, running)
    if not before.feasible:
        return  # too slow for some choice's room: it may or may not lift
    assert lifted is not None
    after = evaluate(model, options, {(n, p): o for n, c in
                                      series_parallel.expand(lifted).items()
                                      for p, o in c.parts}, snapshot)
    assert after.latency <= before.latency * (1 + 1e-9) + 1e-12
    assert after.objective <= before.objective * (1 + 1e-9) + 1e-12


def _merged(steps: list[dict[str, Any]], sla: float,
            loops: list[dict[str, Any]] | None = None) -> series_parallel.Reduced:
    model, _, options = _model(make_graph(steps, sla=sla, rate=5.0, loops=loops))
    return series_parallel.reduce(model, {n: so.configs for n, so in options.items()})


def test_a_fan_out_of_chains_merges_into_one_choice() -> None:
    steps = [compute("start")]
    for b in range(6):
        steps.append(compute(f"b{b}a", core_seconds=0.2 * (b + 1), deps=["start"]))
        steps.append(tool(f"b{b}b", latency=0.1, deps=[f"b{b}a"]))
    steps.append(compute("join", deps=[f"b{b}b" for b in range(6)]))
    reduced = _merged(steps, sla=20.0)
    assert reduced.choices == 1 and reduced.steps_before == len(steps)


def test_a_loop_with_a_chain_after_its_head_is_one_choice() -> None:
    steps = [compute("gen", deps=["critic"]), tool("check", deps=["gen"]),
             compute("critic", deps=["check"]), tool("after", deps=["gen"])]
    loops = [{"steps": ["gen", "check", "critic"], "expectedIterations": 1.5,
              "maxIterations": 3}]
    reduced = _merged(steps, sla=30.0, loops=loops)
    assert reduced.choices == 1


def test_an_n_shape_is_not_series_parallel_and_stays_apart() -> None:
    """a -> c, b -> c, b -> d: no two steps share both ends, none is another's only link.
    (An edge a longer path implies is dropped first: a -> b -> c makes a -> c no limit.)"""
    steps = [compute("a"), compute("b"), compute("c", deps=["a", "b"]),
             compute("d", deps=["b"])]
    assert _merged(steps, sla=30.0).choices == 4
    implied = [compute("a"), compute("b", deps=["a"]), compute("c", deps=["a", "b"])]
    assert _merged(implied, sla=30.0).choices == 1


def test_the_merged_model_is_what_plan_solves_and_reports() -> None:
    steps = [compute("start")] + [tool(f"t{i}", latency=0.1 * (i + 1), deps=["start"])
                                  for i in range(5)]
    plan = solve.plan(make_graph(steps, sla=5.0, rate=5.0), POOLS, SMALL, with_stats=True)
    assert plan.feasible and plan.solve_stats is not None
    stats = plan.solve_stats
    assert (stats.steps, stats.choices) == (6, 1)
    assert stats.after_merging is not None and "merge" in stats.seconds


def test_limited_pools_keep_the_steps_apart() -> None:
    """Units in a pool of limited size tie steps together beyond their durations: that model
    is solved unmerged (the plan is the same as brute force says, tested above)."""
    limited = [make_pool("cpu", cpu=True, price=1.0, cores=16, nodes=1)]
    steps = [compute("start")] + [compute(f"c{i}", deps=["start"]) for i in range(3)]
    model = graph_model.build(make_graph(steps, sla=10.0, rate=5.0))
    snapshot = ClusterSnapshot.from_profiles(limited, SMALL)
    options = candidates.build(model, snapshot, SMALL)
    result = milp.solve(model, options, snapshot)
    assert result.selection is not None and result.stats is not None
    assert result.stats.choices is None and result.stats.after_merging is None
