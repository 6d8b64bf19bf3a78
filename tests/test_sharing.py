"""Shared model servers: steps naming one model share one prefill and one decode server per pool,
priced on their summed load; the MILP equals brute force over every selection; render, status
and the runtime route the steps to the shared server."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import parse
from agentgraph.api.runtime import CONFIG_KEY, RuntimeGraph
from agentgraph.controller import render
from agentgraph.local import running
from agentgraph.planner import candidates, milp, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.errors import PlanningError
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import EXAMPLES_DIR, LLAMA3_8B, llm, make_graph, make_pool, shipped_profiles, tool
from test_properties import PROPERTY, SMALL, assert_planned_at, brute_force, unpruned

EIGHT_B = {**LLAMA3_8B, "name": "llama-8b"}
POOLS = [make_pool("big", price=2.5, tflops=1500, bandwidth=6000, memory=192),
         make_pool("small", price=0.4, tflops=120, bandwidth=300, memory=24)]


def fan_out(n: int, *, rate: float | None = 4.0, share: bool = True, sla: float = 20.0,
            **extra: Any) -> AgentGraph:
    steps = [tool("split", 0.05)]
    steps += [llm(f"sum-{i}", deps=["split"], model=EIGHT_B, input_tokens=2048,
                  output_tokens=128, shareServer=share) for i in range(n)]
    steps.append(tool("join", 0.05, [f"sum-{i}" for i in range(n)]))
    return make_graph(steps, sla=sla, rate=rate, **extra)


def test_steps_naming_one_model_share_its_servers_and_cost_less() -> None:
    shared = solve.plan(fan_out(6), POOLS, SMALL)
    alone = solve.plan(fan_out(6, share=False), POOLS, SMALL)
    assert shared.feasible and alone.feasible, (shared.reasons, alone.reasons)
    assert shared.objective is not None and alone.objective is not None
    assert shared.objective.value < alone.objective.value
    assert not alone.servers
    # One server per model, phase and pool; each names its steps; the first step is the lead.
    keys = [(s.model, s.phase, s.pool) for s in shared.servers]
    assert len(keys) == len(set(keys)) and {s.phase for s in shared.servers} == {"prefill",
                                                                                 "decode"}
    on = {(a.step, a.phase): a for a in shared.assignments if a.server is not None}
    assert {step for step, _ in on} == {f"sum-{i}" for i in range(6)}
    for s in shared.servers:
        assert s.name == s.steps[0]
        for step in s.steps:
            a = on[(step, s.phase)]
            assert (a.server, a.pool, a.tensor_parallel, a.batch) == (
                s.name, s.pool, s.tensor_parallel, s.batch)
            assert a.replicas == (s.replicas if step == s.name else 0)
        assert math.isclose(sum(on[(step, s.phase)].cost_per_hour or 0 for step in s.steps),
                            s.cost_per_hour, rel_tol=1e-9)
    # What the plan says it costs is what its parts cost.
    parts = sum(a.cost_per_hour or 0 for a in shared.assignments)
    assert math.isclose(parts, shared.objective.value, rel_tol=1e-9)


def test_who_shares() -> None:
    """A step opting out, another model, another dtype, no request rate, a step with its own
    container: servers of their own."""
    other = {**EIGHT_B, "name": "other-8b"}
    fp8 = {**EIGHT_B, "dtypeBytes": 1}
    graph = make_graph([llm("a", model=EIGHT_B), llm("b", model=EIGHT_B),
                        llm("c", model=EIGHT_B, shareServer=False), llm("d", model=other),
                        llm("e", model=fp8), llm("f", model=fp8),
                        {**llm("g", model=EIGHT_B), "container": {"env": {"X": "1"}}},
                        llm("h", model=LLAMA3_8B), llm("i", model=LLAMA3_8B)], rate=2.0)
    assert graph_model.build(graph).groups == {"llama-8b@2": ("a", "b"),
                                               "llama-8b@1": ("e", "f")}
    assert graph_model.build(fan_out(3, rate=None)).groups == {}


def test_one_name_with_two_shapes_is_refused_naming_both() -> None:
    bigger = {**EIGHT_B, "layers": 40}
    graph = make_graph([llm("a", model=EIGHT_B), llm("b", model=bigger)], rate=1.0)
    with pytest.raises(PlanningError) as e:
        graph_model.build(graph)
    assert "spec.steps[1].llm.model" in str(e.value) and "step a" in str(e.value)


@st.composite
def shared_scenarios(draw: st.DrawFn) -> tuple[AgentGraph, list[HardwareProfile]]:
    pools = [make_pool(f"p{i}", price=draw(st.sampled_from([0.3, 1.0, 2.5])),
                       tflops=draw(st.sampled_from([100, 400, 1500])),
                       bandwidth=draw(st.sampled_from([300, 2000, 6000])),
                       memory=draw(st.sampled_from([24, 80, 192])),
                       nodes=draw(st.none() | st.integers(1, 2)), cores=16, max_tp=2)
             for i in range(draw(st.integers(1, 2)))]
    steps: list[dict[str, Any]] = []
    for i in range(draw(st.integers(2, 3))):
        deps = draw(st.lists(st.sampled_from([s["name"] for s in steps]), unique=True,
                             max_size=1)) if steps else []
        steps.append(llm(f"s{i}", deps=deps, model=EIGHT_B,
                         input_tokens=draw(st.sampled_from([256, 2048])),
                         output_tokens=draw(st.sampled_from([32, 256])),
                         disaggregation=draw(st.sampled_from(["auto", "colocated"]))))
    extra = {"ttftSeconds": draw(st.sampled_from([0.3, 2.0]))} if draw(st.booleans()) else {}
    graph = make_graph(steps, sla=draw(st.sampled_from([0.5, 2.0, 8.0, 40.0])),
                       rate=draw(st.sampled_from([0.5, 4.0, 30.0])), **extra)
    return graph, pools


@PROPERTY
@given(shared_scenarios())
def test_shared_milp_cost_equals_brute_force(case: tuple[AgentGraph, list[Any]]) -> None:
    """Every selection of every step phase's option, scored by ``evaluate`` (which sizes the
    shared servers and refuses two on one pool): the plan costs the cheapest feasible one."""
    graph, pools = case
    assert graph_model.build(graph).groups
    assert_planned_at(graph, pools, brute_force(*unpruned(graph, pools, 20000)))


def test_render_makes_one_deployment_per_server_and_routes_every_step_to_it() -> None:
    graph = fan_out(4)
    plan = solve.plan(graph, POOLS, SMALL)
    assert plan.feasible and plan.servers
    by_name = {p.name: p for p in POOLS}
    objects = render.render(graph, plan, by_name, "ns", "uid-1")
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for s in plan.servers:
        d = deployments[render.object_name(graph.metadata.name, s.name, s.phase)]
        assert d["spec"]["replicas"] == s.replicas
        for member in s.steps[1:]:
            assert render.object_name(graph.metadata.name, member, s.phase) not in deployments
    executed = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    runtime = RuntimeGraph.model_validate_json(executed[CONFIG_KEY])
    phases = {(st_.name, p.phase): p for st_ in runtime.steps for p in st_.phases}
    for s in plan.servers:
        lead = phases[(s.name, s.phase)]
        for member in s.steps:
            assert phases[(member, s.phase)].selector == lead.selector
            assert phases[(member, s.phase)].replicas == s.replicas


def test_a_shared_server_answers_each_step_as_its_own() -> None:
    """In one process: the gateway calls each summariser on the shared server's workers, which
    answer with that step's configuration and count it under its own name."""
    graph = fan_out(3, sla=30.0, runtime={"emulate": True})
    plan = solve.plan(graph, POOLS, SMALL)
    assert plan.servers

    async def main() -> None:
        async with running(graph, POOLS, plan=plan) as g:
            r = await g.invoke({"text": "hi"})
            assert r.status == 200, r.body
            called = [s["step"] for s in r.json()["steps"]]
            assert {f"sum-{i}" for i in range(3)} <= set(called)
            assert set(g.workers) == {(s.name, s.phase) for s in plan.servers} | {
                ("split", "run"), ("join", "run")}
            for s in plan.servers:
                worker = g.workers[(s.name, s.phase)][0]
                for step in s.steps:
                    count = worker.series[step].codes[200]._value.get()
                    assert count == 1, (step, s.phase, count)

    asyncio.run(main())


def test_the_fan_out_example_saves_on_shared_servers_in_explain() -> None:
    graph = parse((EXAMPLES_DIR / "research-fanout.yaml").read_text(), "fan").graphs[0]
    plan = solve.plan(graph, shipped_profiles(), with_explanation=True)
    assert plan.feasible and plan.objective is not None
    unshared = next(b for b in plan.baselines if b.kind == "unshared")
    assert unshared.feasible and unshared.extra is not None and unshared.objective is not None
    assert unshared.extra > 0.3 * unshared.objective  # more than 30 % saved
    eight_b = {tuple(s.steps) for s in plan.servers if "8B" in s.model}
    assert tuple(f"summarise-{i}" for i in range(1, 7)) in eight_b


def test_graphs_with_shared_servers_planned_jointly_cost_what_each_costs_alone() -> None:
    """Several graphs go to the MILP without the first-plan heuristic (their capacity would be
    joint): on unbounded pools the joint optimum is the sum of the single ones."""
    graphs = [fan_out(3, sla=8.0), fan_out(2, rate=9.0, sla=6.0)]
    snapshot = ClusterSnapshot.from_profiles(POOLS, SMALL)
    problems = []
    alone = 0.0
    for graph in graphs:
        model = graph_model.build(graph)
        options = candidates.build(model, snapshot, SMALL)
        problems.append((model, options))
        plan = solve.plan(graph, POOLS, SMALL)
        assert plan.feasible and plan.objective is not None and plan.servers
        alone += plan.objective.value
    joint = milp.solve_joint(problems, snapshot)
    assert joint.status == "optimal" and joint.selections is not None
    together = sum(evaluate(m, o, s, snapshot).objective
                   for (m, o), s in zip(problems, joint.selections, strict=True))
    assert math.isclose(together, alone, rel_tol=2e-4), (together, alone)


def test_a_server_whose_steps_have_no_expected_visits_is_still_priced() -> None:
    """A loop expected once runs its rest never on average (visits 0): the server its steps
    share still runs one replica, split evenly between them, and the plan says so."""
    steps = [tool("head", 0.05, ["second"]), llm("first", deps=["head"], model=EIGHT_B),
             llm("second", deps=["first"], model=EIGHT_B)]
    graph = make_graph(steps, sla=30.0, rate=2.0, loops=[
        {"steps": ["head", "first", "second"], "expectedIterations": 1, "maxIterations": 3}])
    plan = solve.plan(graph, POOLS, SMALL)
    assert plan.feasible, plan.reasons
    assert plan.servers and all(s.replicas == 1 for s in plan.servers)
    for s in plan.servers:
        shares = [a.cost_per_hour for a in plan.assignments
                  if a.server == s.name and a.phase == s.phase]
        assert shares and all(math.isclose(x or 0, s.cost_per_hour / len(shares))
                              for x in shares)
