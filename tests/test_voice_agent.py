"""The paper's evaluation agent on the shipped profiles."""

from agentgraph.api.loading import parse
from agentgraph.planner import solve
from builders import EXAMPLES_DIR, shipped_profiles

CPU_POOLS = {"xeon-8480", "epyc-9654"}


def voice_plan(explain: bool = True):  # type: ignore[no-untyped-def]
    docs = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "voice-agent.yaml")
    return solve.plan(docs.graphs[0], shipped_profiles(), with_explanation=explain)


def test_plans_feasibly_within_the_sla() -> None:
    plan = voice_plan(explain=False)
    assert plan.feasible, plan.reasons
    assert plan.latency_seconds is not None and plan.latency_seconds <= plan.sla_seconds
    assert plan.objective is not None and plan.objective.name == "costPerHour"
    # the loop runs up to 4 times: the worst case is reported and longer than the expectation
    assert plan.worst_case_latency_seconds is not None
    assert plan.worst_case_latency_seconds > plan.latency_seconds


def test_non_llm_steps_land_on_cpu_pools() -> None:
    plan = voice_plan(explain=False)
    for a in plan.assignments:
        if a.phase is None:
            assert a.pool in CPU_POOLS, a
        else:
            assert a.pool not in CPU_POOLS, a


def test_beats_every_feasible_homogeneous_baseline() -> None:
    plan = voice_plan()
    assert plan.objective is not None
    feasible = [b for b in plan.baselines if b.feasible]
    assert feasible, "no homogeneous baseline is feasible: the comparison would prove nothing"
    for b in feasible:
        assert b.objective is not None
        assert plan.objective.value < b.objective, b


def test_same_input_same_plan() -> None:
    first = voice_plan(explain=False).model_dump(exclude={"solve_seconds"})
    second = voice_plan(explain=False).model_dump(exclude={"solve_seconds"})
    assert first == second
