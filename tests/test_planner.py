"""Planner behaviour: loops, sub-agents, rates, capacity, constraints, disaggregation."""

from typing import Any

import pytest

from agentgraph.api.graph import AgentGraph
from agentgraph.planner import graph as graph_model
from agentgraph.planner import solve
from builders import LLAMA3_70B, compute, llm, make_graph, make_pool, tool

CPU = make_pool("cpu", cpu=True, price=1.0, cores=32)
GPU = make_pool("gpu", price=2.0)


def by_step(plan) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return {(a.step, a.phase): a for a in plan.assignments}


def test_loop_counts_expected_iterations_and_reports_the_worst_case() -> None:
    graph = make_graph(
        [tool("start", latency=0.1), tool("think", latency=0.2, deps=["start", "act"]),
         tool("act", latency=0.3, deps=["think"]), tool("end", latency=0.1, deps=["think"])],
        loops=[{"steps": ["think", "act"], "expectedIterations": 2.5, "maxIterations": 4}])
    plan = solve.plan(graph, [CPU])
    # The graph leaves the loop at its head: k visits of think, k - 1 of act.
    assert plan.latency_seconds == pytest.approx(0.1 + 2.5 * 0.2 + 1.5 * 0.3 + 0.1)
    assert plan.worst_case_latency_seconds == pytest.approx(0.1 + 4 * 0.2 + 3 * 0.3 + 0.1)
    assert plan.critical_path == ["start", "think", "act", "end"]


def test_loop_steps_see_their_expected_visits_in_the_rate() -> None:
    graph = make_graph(
        [compute("a", core_seconds=1.0, max_cores=1), compute("b", core_seconds=1.0, max_cores=1,
                                                             deps=["a"])],
        loops=[{"steps": ["b"], "expectedIterations": 3, "maxIterations": 3}],
        rate=1.4, sla=100)
    plan = solve.plan(graph, [CPU])
    # 1 core-second per request, utilisation cap 0.7: 2 replicas for a, 6 for b (3 visits)
    assert by_step(plan)[("a", None)].replicas == 2
    assert by_step(plan)[("b", None)].replicas == 6


def test_sub_agent_is_flattened_between_its_neighbours() -> None:
    graph = AgentGraph.model_validate({
        "metadata": {"name": "outer"},
        "spec": {"sla": {"latencySeconds": 5}, "steps": [
            tool("first", latency=0.1),
            {"name": "research", "kind": "agent", "dependsOn": ["first"], "agent": {"steps": [
                tool("search", latency=0.2), tool("read", latency=0.3, deps=["search"])]}},
            tool("last", latency=0.1, deps=["research"]),
        ]}})
    model = graph_model.build(graph)
    assert list(model.steps) == ["first", "research.search", "research.read", "last"]
    assert model.steps["research.search"].deps == ("first",)
    assert model.steps["last"].deps == ("research.read",)
    plan = solve.plan(graph, [CPU])
    assert plan.latency_seconds == pytest.approx(0.7)


def test_loop_headed_by_a_sub_agent_keeps_the_agents_own_edges() -> None:
    # research (a -> b) <-> check: the loop repeats research then check; a -> b stays forward
    graph = AgentGraph.model_validate({
        "metadata": {"name": "outer"},
        "spec": {"sla": {"latencySeconds": 10}, "steps": [
            {"name": "research", "kind": "agent", "dependsOn": ["check"], "agent": {"steps": [
                tool("a", latency=0.1), tool("b", latency=0.2, deps=["a"])]}},
            tool("check", latency=0.3, deps=["research"]),
        ], "loops": [{"steps": ["research", "check"], "expectedIterations": 2,
                      "maxIterations": 3}]}})
    model = graph_model.build(graph)
    [loop] = [b.loop for b in model.blocks if b.loop is not None]
    assert loop.body_preds["research.b"] == ("research.a",)
    assert loop.body_preds["research.a"] == ()
    assert loop.heads == ("research.a",)  # a sub-agent head stands for its entries
    plan = solve.plan(graph, [CPU])
    # two visits of the head, one of the rest (b, then check): the second pass leaves at a
    assert plan.latency_seconds == pytest.approx(2 * 0.1 + (0.2 + 0.3))


def test_sub_agent_errors_name_the_nested_field() -> None:
    graph = AgentGraph.model_validate({
        "metadata": {"name": "outer"},
        "spec": {"sla": {"latencySeconds": 5}, "steps": [
            {"name": "research", "kind": "agent", "agent": {"steps": [
                tool("search", deps=["nope"])]}}]}})
    with pytest.raises(Exception) as e:
        graph_model.build(graph)
    assert "spec.steps[0].agent.steps[0].dependsOn[0]: unknown step 'nope'" in str(e.value)


def test_tighter_sla_buys_faster_and_dearer_configurations() -> None:
    steps = [compute("a", core_seconds=2.0, max_cores=8)]
    loose = solve.plan(make_graph(steps, sla=10, rate=1.0), [CPU])
    tight = solve.plan(make_graph(steps, sla=0.3, rate=1.0), [CPU])
    assert loose.latency_seconds is not None and tight.latency_seconds is not None
    assert tight.latency_seconds <= 0.3 < loose.latency_seconds
    assert tight.objective is not None and loose.objective is not None
    assert tight.objective.value > loose.objective.value


def test_pinned_and_forbidden_pools_are_obeyed() -> None:
    pinned = tool("a", constraints={"pinnedPool": "gpu"})
    plan = solve.plan(make_graph([pinned]), [CPU, GPU])
    assert by_step(plan)[("a", None)].pool == "gpu"
    forbidden = tool("a", constraints={"forbiddenPools": ["cpu"]})
    assert by_step(solve.plan(make_graph([forbidden]), [CPU, GPU]))[("a", None)].pool == "gpu"


def test_capacity_pushes_work_to_the_next_pool() -> None:
    cheap = make_pool("cheap", price=1.0, nodes=1)  # 8 devices
    dear = make_pool("dear", price=3.0)
    graph = make_graph([llm("chat", model=LLAMA3_70B)], rate=20.0, sla=60)
    unbounded = solve.plan(graph, [make_pool("cheap", price=1.0), dear])
    assert {a.pool for a in unbounded.assignments} == {"cheap"}
    assert sum(a.replicas * a.units_per_replica for a in unbounded.assignments) > 8
    bounded = solve.plan(graph, [cheap, dear])
    assert bounded.feasible
    used = sum(a.replicas * a.units_per_replica for a in bounded.assignments if a.pool == "cheap")
    assert used <= 8
    assert "dear" in {a.pool for a in bounded.assignments}
    cap = next(c for c in bounded.constraints if c.name == "capacity:cheap")
    assert cap.value <= cap.limit


def test_capacity_from_the_cluster_overrides_the_profile() -> None:
    graph = make_graph([llm("chat", model=LLAMA3_70B)], rate=20.0, sla=60)
    plan = solve.plan(graph, [make_pool("cheap", price=1.0)], capacity_units={"cheap": 4})
    assert not plan.feasible


def test_colocated_keeps_both_phases_on_one_pool() -> None:
    # prefill wants the compute-rich pool, decode the bandwidth-rich one
    flops = make_pool("flops", price=1.0, tflops=2000, bandwidth=1000)
    bw = make_pool("bw", price=1.0, tflops=200, bandwidth=8000)
    split = solve.plan(make_graph([llm("chat", input_tokens=4096, output_tokens=512)],
                                  rate=10, sla=60), [flops, bw])
    assert {a.phase: a.pool for a in split.assignments} == {"prefill": "flops", "decode": "bw"}
    assert split.transfers and split.transfers[0].bytes_per_request > 0
    together = solve.plan(make_graph([llm("chat", input_tokens=4096, output_tokens=512,
                                          disaggregation="colocated")], rate=10, sla=60),
                          [flops, bw])
    assert len({a.pool for a in together.assignments}) == 1
    assert together.objective is not None and split.objective is not None
    assert together.objective.value >= split.objective.value


def test_ttft_limit_shapes_the_choice() -> None:
    graph = make_graph([llm("chat", input_tokens=4096)], rate=5, sla=60, ttftSeconds=0.2)
    plan = solve.plan(graph, [GPU])
    ttft = next(c for c in plan.constraints if c.name == "ttft:chat")
    assert ttft.value <= 0.2
    assert plan.feasible


def test_without_a_rate_the_objective_is_cost_per_request() -> None:
    plan = solve.plan(make_graph([tool("a")]), [CPU])
    assert plan.objective is not None and plan.objective.name == "costPerRequest"
    assert plan.cost_per_hour is None


def test_solver_status_says_whether_the_plan_is_proven_optimal() -> None:
    plan = solve.plan(make_graph([tool("a")]), [CPU])
    assert plan.solver_status == "optimal"
    steps = [llm(f"l{i}", deps=[f"l{i - 1}"] if i else []) for i in range(6)]
    rushed = solve.plan(make_graph(steps, sla=3.0, rate=5.0), [GPU, make_pool("gpu2", price=1.3)],
                        time_limit=1e-6)
    assert rushed.solver_status != "optimal"
    if rushed.feasible:
        assert rushed.solver_status is not None and rushed.solver_status.startswith("time limit")
    else:
        assert "time limit" in rushed.reasons[0]


def _placement(plan) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return {(a.step, a.phase or "run"): (a.pool, a.tensor_parallel, a.batch, a.replicas,
                                         a.units_per_replica) for a in plan.assignments}


def test_a_running_placement_is_kept_unless_moving_saves_enough() -> None:
    from agentgraph.api.loading import parse
    from builders import EXAMPLES_DIR, shipped_profiles

    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "v").graphs[0]
    profiles = shipped_profiles()
    running = solve.plan(graph, profiles)  # planned for a 4 s SLA
    text = (EXAMPLES_DIR / "voice-agent.yaml").read_text()
    looser = parse(text.replace("latencySeconds: 4.0", "latencySeconds: 6.0"), "v").graphs[0]
    assert looser.spec.sla.latency_seconds == 6.0
    fresh = solve.plan(looser, profiles)
    assert fresh.cost_per_hour < running.cost_per_hour  # so keeping it is a real choice
    saving = 1 - fresh.cost_per_hour / running.cost_per_hour
    kept = solve.plan(looser, profiles, current=_placement(running), keep_within=saving + 0.01)
    assert _placement(kept) == _placement(running)
    assert kept.cost_per_hour == pytest.approx(running.cost_per_hour)
    assert "kept the current placement" in kept.solver_status
    moved = solve.plan(looser, profiles, current=_placement(running), keep_within=saving - 0.01)
    assert _placement(moved) == _placement(fresh) and moved.solver_status == "optimal"
    # The running placement no longer fits (its decode pool is full): it moves whatever the
    # threshold, and the result meets everything on the smaller cluster.
    decode_pool = by_step(running)[("reason", "decode")].pool
    free = {p.name: 0.0 if p.name == decode_pool else 1000.0 for p in profiles}
    squeezed = solve.plan(looser, profiles, capacity_units=free,
                          current=_placement(running), keep_within=10.0)
    assert squeezed.feasible
    assert decode_pool not in {a.pool for a in squeezed.assignments}
    # A placement naming a step the graph no longer has is not a placement of this graph.
    stale = {**_placement(running), ("gone", "run"): ("xeon-8480", 1, 1, 1, 1.0)}
    assert _placement(solve.plan(looser, profiles, current=stale, keep_within=10.0)) == \
        _placement(fresh)


def test_pod_slots_limit_a_pool_like_its_units() -> None:
    """Many small steps can fill a pool's pod limit long before its cores: the plan spreads
    them, and with no room anywhere the reason names the pool's pods."""
    steps = [tool(f"t{i}", latency=0.1) for i in range(6)]
    graph = make_graph(steps, sla=1.0)
    cheap = make_pool("cheap", cpu=True, price=1.0, cores=64)
    dear = make_pool("dear", cpu=True, price=3.0, cores=64)
    free_units = {"cheap": 64.0, "dear": 64.0}
    roomy = solve.plan(graph, [cheap, dear], capacity_units=free_units,
                       capacity_pods={"cheap": 100.0, "dear": 100.0})
    assert {a.pool for a in roomy.assignments} == {"cheap"}
    tight = solve.plan(graph, [cheap, dear], capacity_units=free_units,
                       capacity_pods={"cheap": 4.0, "dear": 100.0})
    assert tight.feasible
    assert sum(a.replicas for a in tight.assignments if a.pool == "cheap") == 4
    assert any(c.name == "capacity:cheap/pods" and c.binding for c in tight.constraints)
    full = solve.plan(graph, [cheap, dear], capacity_units=free_units,
                      capacity_pods={"cheap": 2.0, "dear": 2.0})
    assert not full.feasible
    assert any("capacity:cheap/pods: needs" in r and "pods" in r for r in full.reasons)


def test_a_cluster_with_room_plans_as_if_unbounded_and_a_full_one_does_not() -> None:
    """The uncapped-first shortcut: with room everywhere the capped optimum is the unbounded
    one; when a pool is short, the plan respects it (and costs more)."""
    from agentgraph.api.loading import parse
    from builders import EXAMPLES_DIR, shipped_profiles

    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "v").graphs[0]
    profiles = shipped_profiles()
    free = solve.plan(graph, profiles)
    roomy = {p.name: 1000.0 for p in profiles}
    with_room = solve.plan(graph, profiles, capacity_units=roomy, capacity_pods=roomy)
    assert _placement(with_room) == _placement(free) and with_room.solver_status == "optimal"
    decode = by_step(free)[("reason", "decode")]
    short = {**roomy, decode.pool: decode.units_per_replica * decode.replicas - 1}
    squeezed = solve.plan(graph, profiles, capacity_units=short, capacity_pods=roomy)
    assert squeezed.feasible and squeezed.cost_per_hour > free.cost_per_hour
    used = sum(a.units_per_replica * a.replicas for a in squeezed.assignments
               if a.pool == decode.pool)
    assert used <= short[decode.pool]


def test_a_replica_must_fit_on_one_node() -> None:
    """Free devices spread over nodes are not one block: with at most 1 free on any B200 node,
    no TP2 replica is planned there, and the reason says so when nothing else fits."""
    from agentgraph.api.loading import parse
    from builders import EXAMPLES_DIR, shipped_profiles

    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "v").graphs[0]
    profiles = shipped_profiles()
    free = solve.plan(graph, profiles)
    decode = by_step(free)[("reason", "decode")]
    assert decode.tensor_parallel >= 2
    roomy = {p.name: 1000.0 for p in profiles}
    blocks = {**{p.name: 8.0 for p in profiles}, decode.pool: decode.tensor_parallel - 1}
    split = solve.plan(graph, profiles, capacity_units=roomy, capacity_pods=roomy,
                       capacity_block=blocks)
    assert split.feasible
    assert all(a.units_per_replica <= blocks[a.pool] for a in split.assignments)
    only = [p for p in profiles if p.name in {a.pool for a in free.assignments}]
    none_fit = solve.plan(graph, only, capacity_units=roomy, capacity_pods=roomy,
                          capacity_block={p.name: 0.5 if p.spec.device_type != "cpu"
                                          else 64.0 for p in only})
    assert not none_fit.feasible
    assert any("units on one node" in r for r in none_fit.reasons), none_fit.reasons


def test_plan_json_with_stats_is_the_only_thing_on_stdout() -> None:
    """A fresh process (HiGHS prints a banner on file descriptor 1 the first time it starts):
    ``-o json --stats`` writes one JSON document and nothing else, with the model's sizes."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "agentgraph.cli", "plan",
                           "examples/voice-agent.yaml", "--profiles", "hardware_profiles",
                           "-o", "json", "--stats"], capture_output=True, text=True, check=True,
                          timeout=120)
    plan = json.loads(done.stdout)
    stats = plan["solveStats"]
    assert stats["afterBounds"] <= stats["configurations"]
    # merging can add options (a merged choice's front), fixing only takes them away
    assert stats["afterFixing"] <= stats["afterMerging"]
    assert stats["choices"] < stats["steps"]  # no pool is limited: its steps merged
    assert stats["startFrom"] in ("heuristic", "none")
    assert {"lp", "milp", "total"} <= set(stats["seconds"])
    assert plan["solverStatus"] == "optimal" and 0 <= plan["solverGap"] <= 1e-4


def test_a_replan_starts_the_solver_from_the_running_plan() -> None:
    steps = [llm(f"l{i}", deps=[f"l{i - 1}"] if i else []) for i in range(4)]
    graph = make_graph(steps, sla=6.0, rate=5.0)
    pools = [GPU, make_pool("gpu2", price=1.3)]
    first = solve.plan(graph, pools, with_stats=True)
    assert first.solve_stats is not None and first.solve_stats.start_from == "heuristic"
    again = solve.plan(graph, pools, current=_placement(first), with_stats=True)
    assert again.solve_stats is not None and again.solve_stats.start_from == "running plan"
    assert again.solve_stats.start == pytest.approx(first.objective.value)  # type: ignore[union-attr]
    assert _placement(again) == _placement(first)


def _branching_model() -> tuple[Any, Any, Any]:
    """A 24-step DAG on the shipped profiles at a binding SLA, with its options and snapshot.
    Each step waits for the second and third before it: no series-parallel graph, so most
    steps stay apart after merging, and our search has to branch."""
    from agentgraph.costs.base import CostSettings
    from agentgraph.planner import candidates, diagnose
    from agentgraph.planner.evaluate import evaluate
    from agentgraph.planner.snapshot import ClusterSnapshot
    from builders import compute, shipped_profiles

    steps = []
    for i in range(24):
        deps = [f"s{j}" for j in (i - 2, i - 3) if j >= 0]
        if i % 3 == 0:
            steps.append(llm(f"s{i}", deps=deps, input_tokens=512 * (1 + i % 4),
                             output_tokens=32 * (1 + i % 5)))
        else:
            steps.append(compute(f"s{i}", core_seconds=0.05 * (1 + i % 4), deps=deps,
                                 max_cores=8))
    profiles = shipped_profiles()
    settings = CostSettings()
    loose = graph_model.build(make_graph(steps, sla=1e4, rate=10.0))
    snapshot = ClusterSnapshot.from_profiles(profiles, settings)
    options = candidates.build(loose, snapshot, settings)
    fastest = evaluate(loose, options, diagnose.fastest_selection(options), snapshot).latency
    model = graph_model.build(make_graph(steps, sla=1.4 * fastest, rate=10.0))
    return model, candidates.build(model, snapshot, settings), snapshot


def test_both_exact_engines_agree_where_the_search_must_branch() -> None:
    """HiGHS alone and our branch and bound alone (which has to branch here) find plans of
    the same cost within the gap."""
    from agentgraph.planner import milp
    from agentgraph.planner.evaluate import evaluate

    model, options, snapshot = _branching_model()
    answers = {engines: milp.solve(model, options, snapshot, engines=engines)
               for engines in (("highs",), ("branch",))}
    costs = {}
    for engines, result in answers.items():
        assert result.status == "optimal" and result.selection is not None, result.status
        ev = evaluate(model, options, result.selection, snapshot)
        assert ev.feasible, ev.violations
        costs[engines] = ev.objective
    assert costs[("branch",)] == pytest.approx(costs[("highs",)], rel=2 * milp.MIP_REL_GAP)
    assert answers[("branch",)].stats is not None and answers[("branch",)].stats.nodes > 1
    # Started from a feasible but dear plan (every step at its fastest), each engine still
    # returns the optimum, not the start (HiGHS once handed back its start as "optimal").
    fastest_start = {name: min(so.configs, key=lambda c: (c.latency, c.objective))
                     for name, so in options.items()}
    for engines in (("highs",), ("branch",), milp.ENGINES):
        result = milp.solve(model, options, snapshot, start=fastest_start, engines=engines)
        assert result.selection is not None and result.status == "optimal"
        started = evaluate(model, options, result.selection, snapshot).objective
        assert started == pytest.approx(costs[("highs",)], rel=2 * milp.MIP_REL_GAP)


def test_our_search_improves_its_new_incumbents_and_stays_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new incumbent of our search goes through the step-by-step improvement, which
    returns a plan at most as dear, and the answer is still HiGHS's optimum. (On a 100-step
    window graph of the planner bench: the 24-step graph above finds no incumbent better
    than its first plan.)"""
    import sys

    from agentgraph.costs.base import CostSettings
    from agentgraph.planner import candidates, milp
    from agentgraph.planner.evaluate import evaluate
    from agentgraph.planner.snapshot import ClusterSnapshot
    from builders import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import planner_bench

    profiles = planner_bench.pools()
    model = graph_model.build(planner_bench.generated(100, 6, profiles, 1.5, "window"))
    settings = CostSettings()
    snapshot = ClusterSnapshot.from_profiles(profiles, settings)
    options = candidates.build(model, snapshot, settings)
    seen: list[tuple[float, float]] = []
    made = milp._Run._improver

    def counting(self: Any, upper: Any, where: Any) -> Any:
        improve = made(self, upper, where)
        cost = self.cost[~self.integer | (upper > 0)]

        def wrapped(chosen: Any) -> Any:
            better = improve(chosen)
            seen.append((float(cost[chosen].sum()), float(cost[better].sum())))
            return better

        return wrapped

    monkeypatch.setattr(milp._Run, "_improver", counting)
    ours = milp.solve(model, options, snapshot, engines=("branch",))
    theirs = milp.solve(model, options, snapshot, engines=("highs",))
    assert seen, "no incumbent of our search was improved"
    assert all(after <= before * (1 + 1e-12) for before, after in seen)
    assert ours.status == "optimal" and ours.selection is not None
    assert theirs.selection is not None
    mine = evaluate(model, options, ours.selection, snapshot)
    assert mine.feasible, mine.violations
    assert mine.objective == pytest.approx(
        evaluate(model, options, theirs.selection, snapshot).objective, rel=2 * milp.MIP_REL_GAP)


def test_an_lp_without_some_columns_equals_it_with_them_held_at_zero() -> None:
    """``lp.select_columns`` (our search's LP holds only the columns left) keeps the rows and
    each kept column's entries: its optimum is the full LP's with the others bounded to 0."""
    import numpy as np

    from agentgraph.planner import lp

    rng = np.random.default_rng(7)
    b = lp.Builder()
    cols = [b.var(float(rng.uniform(1, 5)), binary=True) for _ in range(12)]
    for group in (cols[:4], cols[4:8], cols[8:]):
        b.row({c: 1.0 for c in group}, 1.0, 1.0)
    b.row({c: float(rng.uniform(0.1, 1.0)) for c in cols}, -np.inf, 2.5)
    model = lp.highs_lp(b)

    def solved(m: Any) -> Any:
        h = lp.quiet_highs()
        h.passModel(m)
        h.run()
        return h

    def optimum(m: Any) -> float:
        return float(solved(m).getInfo().objective_function_value)

    keep = np.array(solved(model).getSolution().col_value) <= 1e-9  # drop what the LP used
    upper = np.array(b.upper)
    upper[~keep] = 0.0
    model.col_upper_ = lp.infinite(upper)
    held = optimum(model)
    model.col_upper_ = lp.infinite(np.array(b.upper))
    assert optimum(lp.select_columns(model, keep)) == pytest.approx(held, rel=1e-12)
    assert optimum(model) < held  # the dropped columns mattered


def _vector_search(name: str, deps: list[str]) -> dict[str, Any]:
    return {"name": name, "kind": "vector-search", "dependsOn": deps,
            "vectorSearch": {"vectors": 1_000_000, "dimensions": 768}}  # not accelerated


def test_baselines_put_cpu_steps_on_cpu_and_match_a_pinned_plan() -> None:
    # A CPU-only step makes every "all on one accelerator" plan impossible; the baseline a user
    # would pick (the LLM on one GPU type, the search and tool on CPU) must still be shown, and
    # cost what planning it by hand through allowedPools costs.
    steps = [_vector_search("search", []), llm("answer", deps=["search"]),
             tool("notify", deps=["answer"])]
    pools = [make_pool("fast", price=4.0, tflops=900, bandwidth=3300),
             make_pool("slow", price=1.0, tflops=120, bandwidth=600),
             make_pool("cpu", cpu=True, price=2.0, memory=512, cores=64)]
    plan = solve.plan(make_graph(steps, sla=8.0, rate=2.0), pools, with_explanation=True)
    assert plan.feasible and plan.objective is not None
    by = {(b.kind, b.pool): b for b in plan.baselines}
    assert set(by) >= {("accelerator", "fast"), ("accelerator", "slow")}
    assert ("single-pool", "fast") not in by and ("single-pool", "slow") not in by
    for gpu in ("fast", "slow"):
        b = by[("accelerator", gpu)]
        assert b.feasible and b.objective is not None and b.extra is not None
        pinned = [
            {**s, "constraints": {"allowedPools": ["cpu" if s["kind"] != "llm" else gpu]}}
            for s in steps]
        by_hand = solve.plan(make_graph(pinned, sla=8.0, rate=2.0), pools)
        assert by_hand.objective is not None
        assert b.objective == pytest.approx(by_hand.objective.value, rel=1e-6)
        assert b.extra == pytest.approx(b.objective - plan.objective.value, rel=1e-6)
        assert b.extra >= -1e-9  # the plan is never dearer than a restricted one


def test_without_cpu_steps_the_accelerator_baseline_is_one_pool() -> None:
    pools = [make_pool("fast", price=4.0), make_pool("cpu", cpu=True, price=2.0, memory=512)]
    plan = solve.plan(make_graph([llm("answer")], sla=8.0), pools, with_explanation=True)
    kinds = {(b.kind, b.pool) for b in plan.baselines}
    assert ("single-pool", "fast") in kinds
    assert all(k == "single-pool" for k, _ in kinds)
