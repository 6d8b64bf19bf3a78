"""Every kind of bad input gets one clear message naming the field; nothing crashes."""

from pathlib import Path

import pytest

from agentgraph import cli
from agentgraph.api.loading import LoadError, parse
from agentgraph.planner import solve
from agentgraph.planner.errors import PlanningError
from builders import LLAMA3_70B, compute, llm, make_graph, make_pool, tool

POOLS = [make_pool("gpu", price=2.0), make_pool("cpu", cpu=True, price=1.0)]


def issues_of(graph, pools=POOLS) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanningError) as e:
        solve.plan(graph, pools)
    return [str(i) for i in e.value.issues]


def test_unbounded_cycle_is_rejected_naming_the_steps() -> None:
    graph = make_graph([tool("a", deps=["b"]), tool("b", deps=["a"])])
    [msg] = issues_of(graph)
    assert msg.startswith("spec.steps[")
    assert ".dependsOn" in msg
    assert "a -> b -> a" in msg or "b -> a -> b" in msg
    assert "spec.loops" in msg and "maxIterations" in msg


def test_self_dependency_without_loop_is_a_cycle() -> None:
    [msg] = issues_of(make_graph([tool("a", deps=["a"])]))
    assert "spec.steps[0].dependsOn" in msg and "no bound" in msg


def test_declared_loop_makes_the_cycle_legal() -> None:
    graph = make_graph([tool("a", deps=["b"]), tool("b", deps=["a"])],
                       loops=[{"steps": ["a", "b"], "expectedIterations": 2,
                               "maxIterations": 3}])
    assert solve.plan(graph, POOLS).feasible


def test_unknown_dependency() -> None:
    [msg] = issues_of(make_graph([tool("a"), tool("b", deps=["a", "nope"])]))
    assert msg == "spec.steps[1].dependsOn[1]: unknown step 'nope'"


def test_duplicate_names() -> None:
    [msg] = issues_of(make_graph([tool("a"), tool("a")]))
    assert msg.startswith("spec.steps[1].name: duplicate step name 'a'")


def test_unknown_pool_in_constraints() -> None:
    step = tool("a", constraints={"allowedPools": ["gpu", "tpu"]})
    [msg] = issues_of(make_graph([step]))
    assert msg.startswith("spec.steps[0].constraints.allowedPools[1]: unknown pool 'tpu'")


def test_unknown_loop_member() -> None:
    graph = make_graph([tool("a")], loops=[{"steps": ["a", "zz"], "expectedIterations": 1,
                                            "maxIterations": 2}])
    [msg] = issues_of(graph)
    assert msg == "spec.loops[0].steps[1]: unknown step 'zz'"


def test_cycle_through_a_step_missing_from_the_loop() -> None:
    # a -> x -> b with b -> a as the loop's back edge, but x left out of the loop
    graph = make_graph([tool("a", deps=["b"]), tool("x", deps=["a"]), tool("b", deps=["x"])],
                       loops=[{"steps": ["a", "b"], "expectedIterations": 2,
                               "maxIterations": 3}])
    [msg] = issues_of(graph)
    assert msg == ("spec.loops[0].steps: steps ['x'] lie on this loop's cycle but are not "
                   "listed in it")


def test_loop_that_is_not_closed() -> None:
    # no cycle at all, but x sits between two members of the declared loop
    graph = make_graph([tool("a"), tool("x", deps=["a"]), tool("b", deps=["x"])],
                       loops=[{"steps": ["a", "b"], "expectedIterations": 2,
                               "maxIterations": 3}])
    [msg] = issues_of(graph)
    assert msg.startswith("spec.loops[0].steps: loop 'a' is not closed")


def test_no_profiles() -> None:
    [msg] = issues_of(make_graph([tool("a")]), pools=[])
    assert msg.startswith("hardwareProfiles:")


def test_infeasible_sla_names_lowest_latency_and_dominant_step() -> None:
    graph = make_graph([tool("fetch", latency=0.3), compute("crunch", core_seconds=4.0,
                                                              deps=["fetch"], max_cores=4)],
                       sla=0.5)
    plan = solve.plan(graph, POOLS)
    assert not plan.feasible
    [reason] = plan.reasons
    assert reason.startswith("spec.sla.latencySeconds: 0.5 s cannot be met")
    assert "1.3 s" in reason  # 0.3 s fetch + 4 core-seconds on 4 cores
    assert "step crunch dominates" in reason


def test_model_that_fits_nowhere() -> None:
    huge = {**LLAMA3_70B, "parametersBillions": 2000}
    plan = solve.plan(make_graph([llm("chat", model=huge)]), POOLS)
    assert not plan.feasible
    # one line per phase and pool, each naming its pool
    prefill = [r.removeprefix("spec.steps[0] (chat prefill): fits no pool: ")
               for r in plan.reasons if "(chat prefill)" in r]
    assert [r.split(":")[0] for r in prefill] == ["cpu", "gpu"], plan.reasons
    assert all("prefill needs 4000.3 GB" in r and "decode" not in r for r in prefill)
    assert len(plan.reasons) == 4


def test_unreachable_tbt_says_the_fastest() -> None:
    graph = make_graph([llm("chat", model=LLAMA3_70B)], tbtSeconds=0.0001)
    plan = solve.plan(graph, POOLS)
    assert not plan.feasible
    assert any("tbtSeconds 0.0001" in r and "the fastest is" in r for r in plan.reasons)


def test_unreachable_ttft_names_the_field() -> None:
    graph = make_graph([llm("chat", input_tokens=8000)], ttftSeconds=0.5)
    pools = [make_pool("slow", tflops=10, bandwidth=100)]
    plan = solve.plan(graph, pools)
    assert not plan.feasible
    assert any("ttftSeconds" in r for r in plan.reasons), plan.reasons


def test_capacity_shortfall_is_reported() -> None:
    graph = make_graph([llm("chat", model=LLAMA3_70B)], rate=50.0, sla=30)
    plan = solve.plan(graph, [make_pool("gpu", nodes=1)])
    assert not plan.feasible
    assert any("capacity:gpu" in r for r in plan.reasons), plan.reasons


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed", "malformed YAML"),
        ("kind: Pod\nmetadata: {name: x}\n", "kind: 'Pod' is not one of"),
        ("- just\n- a list\n", "expected a mapping"),
        ("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: g}\n"
         "spec: {sla: {latencySeconds: 1}, steps: [{name: a, kind: tool, tool: "
         "{latencySeconds: -1}}]}\n", "AgentGraph/g: spec.steps[0].tool.latencySeconds:"),
        ("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: g}\n"
         "spec: {sla: {latencySeconds: 1}, steps: [{name: a, kind: llm}]}\n",
         "spec.steps[0]: kind 'llm' needs field 'llm'"),
        ("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: g}\n"
         "spec: {sla: {latencySecond: 1}, steps: [{name: a, kind: tool, tool: "
         "{latencySeconds: 1}}]}\n", "spec.sla.latencySecond: Extra inputs are not permitted"),
        ("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: Bad_Name}\n"
         "spec: {sla: {latencySeconds: 1}, steps: [{name: a, kind: tool, tool: "
         "{latencySeconds: 1}}]}\n", "metadata.name"),
        ("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: 1st}\n"
         "spec: {sla: {latencySeconds: 1}, steps: [{name: a, kind: tool, tool: "
         "{latencySeconds: 1}}]}\n", "AgentGraph/1st: metadata: name '1st' must be a DNS-1035 "
         "label"),
    ],
)
def test_load_errors_name_the_field(text: str, expected: str) -> None:
    with pytest.raises(LoadError) as e:
        parse(text, "in.yaml")
    assert any(line.startswith("in.yaml: ") and expected in line for line in e.value.lines), \
        e.value.lines


def test_cli_error_is_one_line_with_file_and_field(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: g}\n"
                   "spec: {sla: {latencySeconds: 1}, steps: [{name: a, kind: tool, "
                   "dependsOn: [ghost], tool: {latencySeconds: 1}}]}\n")
    assert cli.main(["plan", str(bad), "--profiles", "hardware_profiles"]) == cli.EXIT_INVALID
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{bad}: spec.steps[0].dependsOn[0]: unknown step 'ghost'"]


def test_cli_infeasible_exits_1_with_reason(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tight.yaml"
    f.write_text("apiVersion: agentgraph.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: g}\n"
                 "spec: {sla: {latencySeconds: 0.01}, steps: [{name: a, kind: tool, "
                 "tool: {latencySeconds: 1}}]}\n")
    assert cli.main(["plan", str(f), "--profiles", "hardware_profiles"]) == cli.EXIT_INFEASIBLE
    assert "spec.sla.latencySeconds: 0.01 s cannot be met" in capsys.readouterr().err


def test_cli_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "/no/such.yaml"]) == cli.EXIT_INVALID
    assert capsys.readouterr().err.startswith("/no/such.yaml: cannot read")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([llm("chat"), tool("chat-prefill")],
         "spec.steps[1].name: step chat-prefill would render objects named 'g-chat-prefill', as "
         "step chat (spec.steps[0]) does; rename one"),
        ([{"name": "a", "kind": "agent", "agent": {"steps": [tool("b")]}}, tool("a-b")],
         "spec.steps[1].name: step a-b would render objects named 'g-a-b', as step a.b "
         "(spec.steps[0].agent.steps[0]) does; rename one"),
        ([{"name": "x", "kind": "agent", "agent": {"steps": [tool("gateway")]}}, tool("y")],
         None),  # x.gateway is g-x-gateway: no clash with the gateway (g-gateway)
    ],
)
def test_steps_that_would_render_one_object_are_refused(steps: list[dict[str, object]],
                                                        expected: str | None) -> None:
    graph = make_graph(steps)
    if expected is None:
        assert solve.plan(graph, POOLS).feasible
        return
    assert issues_of(graph) == [expected]
