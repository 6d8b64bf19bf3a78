"""Replanning: the pure decision (scale out at once, scale in on a clear drop, corrections out
of noise, cooldown, pressure on an unexplained breach), corrections and the cost of moving in
the planner, and one replanner pass against a stand-in for Prometheus (the real one is in
e2e/test_replanning.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentgraph.controller import replanning, status
from agentgraph.controller.prometheus import Unavailable
from agentgraph.costs.base import CostSettings
from agentgraph.planner import replan, solve
from agentgraph.planner.replan import Learned, Measurement, ReplanSettings, SlotMeasure
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import make_graph, make_pool, tool

S = ReplanSettings(cooldown_seconds=30, min_calls=5)


def measured(rate: float, latency: float | None = 0.5, *slots: SlotMeasure) -> Measurement:
    return Measurement(window_seconds=20, rate=rate, latency=latency, slots=slots)


def slot(mean: float, predicted: float = 0.1, calls: float = 100, pool: str = "a"
         ) -> SlotMeasure:
    return SlotMeasure("call", "run", pool, mean, predicted, calls)


def test_more_load_than_planned_scales_out_at_once_with_headroom() -> None:
    d = replan.decide(Learned(), measured(10), spec_rate=5, sla_seconds=1, now=0, settings=S)
    assert d.changed and d.learned.planned_rate == pytest.approx(12)
    assert replan.planning_rate(d.learned, 5) == pytest.approx(12)
    assert "measured 10 requests/s" in d.summary


def test_noise_within_the_headroom_changes_nothing() -> None:
    memory = Learned(planned_rate=12, last_change=0)
    for rate in (9.0, 10.5, 11.9, 10.0):
        d = replan.decide(memory, measured(rate), 5, 1, now=100, settings=S)
        assert not d.changed, d.summary
        assert d.learned.planned_rate == 12


def test_a_clear_drop_scales_in_but_never_under_the_spec_target() -> None:
    memory = Learned(planned_rate=24, last_change=0)
    d = replan.decide(memory, measured(10), 5, 1, now=100, settings=S)
    assert d.changed and d.learned.planned_rate == pytest.approx(12)
    d = replan.decide(Learned(planned_rate=12, last_change=0), measured(1), 5, 1, now=100,
                      settings=S)
    assert d.changed and d.learned.planned_rate is None  # back to the spec's 5/s
    assert replan.planning_rate(d.learned, 5) == 5


def test_nothing_is_learned_while_cooling_down() -> None:
    memory = Learned(planned_rate=12, last_change=100)
    d = replan.decide(memory, measured(50, 5.0, slot(0.5)), 5, 1, now=110, settings=S)
    assert not d.changed and d.learned == memory
    assert replan.decide(memory, measured(50), 5, 1, now=131, settings=S).changed


def test_a_slow_pool_is_learned_smoothly_and_noise_is_ignored() -> None:
    d = replan.decide(Learned(), measured(1, 0.5, slot(0.3)), 5, 1, 0, S)
    factor = d.learned.corrections[("call", "run", "a")]
    assert factor == pytest.approx(3 ** S.smoothing)
    assert d.changed and "call on a measured 0.3 s" in d.summary
    # The next plan predicts with the factor; the rest of the way is learned from there.
    again = replan.decide(d.learned, measured(1, 0.5, slot(0.3, predicted=0.1 * factor)),
                          5, 1, 100, S)
    assert again.learned.corrections[("call", "run", "a")] > factor
    # within the band of what is learned: nothing moves
    quiet = replan.decide(Learned(), measured(1, 0.5, slot(0.11)), 5, 1, 0, S)
    assert not quiet.changed and not quiet.learned.corrections
    few = replan.decide(Learned(), measured(1, 0.5, slot(0.3, calls=2)), 5, 1, 0, S)
    assert not few.changed  # too few calls to count


def test_advisory_learns_against_the_uncorrected_prediction() -> None:
    """The running plan carries no correction in advisory mode: the same slowness measured
    again must not compound the factor."""
    d = replan.decide(Learned(), measured(1, 0.5, slot(0.3)), 5, 1, 0, S, applied={})
    first = d.learned.corrections[("call", "run", "a")]
    for now in (100, 200, 300, 400, 500):
        d = replan.decide(d.learned, measured(1, 0.5, slot(0.3)), 5, 1, now, S, applied={})
    assert first < d.learned.corrections[("call", "run", "a")] <= 3.0 + 1e-9


def test_an_unexplained_breach_adds_replicas_after_it_persists() -> None:
    memory = Learned(planned_rate=12, last_change=0)
    d = replan.decide(memory, measured(10, latency=2.0), 5, 1, 100, S)
    assert not d.changed and d.learned.breaches == 1
    d = replan.decide(d.learned, measured(10, latency=2.0), 5, 1, 110, S)
    assert d.changed and d.learned.planned_rate == pytest.approx(12 * S.headroom)
    assert "over the 1 s SLA for 2 passes" in d.summary
    calm = replan.decide(replace_breaches(memory, 1), measured(10, latency=0.5), 5, 1, 100, S)
    assert calm.learned.breaches == 0


def replace_breaches(memory: Learned, n: int) -> Learned:
    return Learned(memory.corrections, memory.planned_rate, memory.last_change, n)


# ------------------------------------------------------------------------- the planner side


def two_pools() -> list[Any]:
    return [make_pool("a", cpu=True, price=1.0), make_pool("b", cpu=True, price=1.6)]


def test_a_correction_makes_a_slow_pool_cost_more_replicas_or_lose_the_step() -> None:
    step = tool("call", latency=0.2)
    step["tool"].update(cpuCores=1, concurrency=1)
    graph = make_graph([step], sla=0.5, rate=20)
    profiles = two_pools()
    plain = solve.plan(graph, profiles)
    assert plain.assignments[0].pool == "a"
    settings = CostSettings()
    def corrected(factor: float) -> Any:
        shot = ClusterSnapshot.from_profiles(profiles, settings,
                                             corrections={("call", "run", "a"): factor})
        return solve.plan(graph, profiles, snapshot=shot).assignments[0]

    scaled = corrected(1.4)  # slower, and still cheaper than b: more replicas on a
    assert scaled.pool == "a" and scaled.replicas > plain.assignments[0].replicas
    assert scaled.latency_seconds == pytest.approx(0.28)
    assert corrected(2.0).pool == "b"  # twice the replicas on a cost more than b's price
    fast_b = [make_pool("a", cpu=True, price=1.0), make_pool("b", cpu=True, price=9.0)]
    profiles = fast_b
    assert corrected(2.0).pool == "a"  # b is dear: a, 2x slower, still pays
    assert corrected(3.0).pool == "b"  # 0.6 s on a misses the 0.5 s SLA, whatever it costs


def test_moving_a_running_step_must_pay_for_itself() -> None:
    graph = make_graph([tool("call", latency=0.2)], sla=1, rate=1)
    near = [make_pool("a", cpu=True, price=1.05), make_pool("b", cpu=True, price=1.0)]
    fresh = solve.plan(graph, near)
    assert fresh.assignments[0].pool == "b"
    a = next(p for p in solve.plan(make_graph([tool("call", latency=0.2, constraints={
        "pinnedPool": "a"})], sla=1, rate=1), near).assignments)
    current = {("call", "run"): (a.pool, a.tensor_parallel, a.batch, a.replicas + 1,
                                 a.units_per_replica)}  # a rate change: replicas differ
    stays = solve.plan(graph, near, current=current, move_cost=0.10)
    assert stays.assignments[0].pool == "a"  # 5% cheaper elsewhere is not worth a move
    moves = solve.plan(graph, near, current=current, move_cost=0.01)
    assert moves.assignments[0].pool == "b"
    assert stays.cost_per_hour == pytest.approx(fresh.cost_per_hour * 1.05)  # the true cost


# ------------------------------------------------------------------------- one replanner pass


class FakePrometheus:
    """Stands in for controller.prometheus.Prometheus: hands back a fixed measurement."""

    def __init__(self, m: Measurement | Unavailable) -> None:
        self.m = m

    def measure(self, namespace: str, graph: str, percentile: float, window: float
                ) -> Measurement:
        if isinstance(self.m, Unavailable):
            raise self.m
        return self.m


def running_graph(mode: str = "auto") -> tuple[Any, dict[str, Any]]:
    graph = make_graph([tool("call", latency=0.2)], sla=1, rate=5)
    graph = graph.model_copy(update={"spec": graph.spec.model_copy(update={
        "replan": graph.spec.replan.model_copy(update={"mode": mode})})})
    plan = solve.plan(graph, two_pools())
    obj = {"metadata": {"name": "g", "namespace": "ns", "generation": 1},
           "status": status.build(None, 1, plan, [], ready=True, at="2026-12-01T00:00:00Z",
                                  planned_rate=5)}
    return graph, obj


def test_a_pass_learns_the_rate_and_asks_for_a_replan_in_auto_mode() -> None:
    graph, obj = running_graph()
    out = replanning.run_pass(graph, obj, FakePrometheus(measured(10, 0.4)), 20, S, 1000.0)
    assert out.replan and out.written
    st = status.parse(out.status)
    assert st.replan is not None and st.replan.planned_requests_per_second == pytest.approx(12)
    assert st.observed is not None and st.observed.requests_per_second == 10
    assert status.condition_status(out.status, "MetricsUnavailable") == "False"
    sla = next(c for c in st.conditions if c.type == "SLAMet")
    assert (sla.status, sla.reason) == ("True", "Measured") and "p95 0.4 s" in sla.message
    plan = replanning.planning(graph, out.status)
    assert plan.rate == pytest.approx(12)
    # The same figures again change nothing, and the status is not rewritten.
    obj2 = {**obj, "status": out.status}
    again = replanning.run_pass(graph, obj2, FakePrometheus(measured(10.3, 0.41)), 20, S,
                                1001.0)
    assert not again.replan and not again.written


def test_advisory_recommends_and_applies_nothing() -> None:
    graph, obj = running_graph("advisory")
    called: list[Learned] = []

    def recommend(learned: Learned) -> tuple[Any, float]:
        called.append(learned)
        return status.parse(obj["status"]).plan, -1.5

    out = replanning.run_pass(graph, obj, FakePrometheus(measured(10, 0.4)), 20, S, 1000.0,
                              recommend)
    assert not out.replan and called and called[0].planned_rate == pytest.approx(12)
    st = status.parse(out.status)
    assert st.replan is not None and st.replan.saving_per_hour == -1.5
    assert st.replan.recommended is not None
    assert replanning.planning(graph, out.status).rate == 5  # the spec's: nothing applied


def test_unreachable_prometheus_keeps_the_plan_and_says_why() -> None:
    graph, obj = running_graph()
    down = Unavailable("PrometheusUnreachable", "http://127.0.0.1:1: connection refused")
    out = replanning.run_pass(graph, obj, FakePrometheus(down), 20, S, 1000.0)
    assert not out.replan
    cond = next(c for c in out.status["conditions"] if c["type"] == "MetricsUnavailable")
    assert cond["status"] == "True" and cond["reason"] == "PrometheusUnreachable"
    assert "connection refused" in cond["message"] and "plan is kept" in cond["message"]
    assert out.status["plan"] == obj["status"]["plan"]
    sla = next(c for c in out.status["conditions"] if c["type"] == "SLAMet")
    assert sla["reason"] == "Predicted"
    # A FULL reconcile afterwards keeps the condition (it is the replanner's).
    full = status.build(out.status, 1, solve.plan(graph, two_pools()), [], ready=True)
    assert status.condition_status(full, "MetricsUnavailable") == "True"


def test_no_prometheus_configured_is_a_condition_not_a_crash() -> None:
    graph, obj = running_graph()
    out = replanning.run_pass(graph, obj, None, 20, S, 1000.0)
    cond = next(c for c in out.status["conditions"] if c["type"] == "MetricsUnavailable")
    assert cond["reason"] == "PrometheusNotConfigured" and "prometheusUrl" in cond["message"]


def test_mode_off_measures_nothing() -> None:
    graph, obj = running_graph("off")
    auto_graph, _ = running_graph("auto")
    measured_once = replanning.run_pass(auto_graph, obj, FakePrometheus(measured(10, 9.0)),
                                        20, S, 1000.0)  # over the SLA, measured, then off
    obj = {**obj, "status": measured_once.status}
    out = replanning.run_pass(graph, obj, FakePrometheus(measured(100, 9.0)), 20, S, 1000.0)
    assert not out.replan and "observed" not in out.status
    assert status.condition_status(out.status, "MetricsUnavailable") is None
    sla = next(c for c in out.status["conditions"] if c["type"] == "SLAMet")
    assert sla["reason"] == "Predicted"  # not the stale measurement
    assert math.isclose(replanning.planning(graph, out.status).rate or 0, 5)


def test_a_status_part_this_operator_cannot_read_loses_only_that_part() -> None:
    _, obj = running_graph()
    st = dict(obj["status"])
    st["conditions"] = [*st["conditions"], {"type": "FromTheFuture", "status": "True"}]
    st["observed"] = {"time": 7}
    parsed = status.parse(st)
    assert parsed.plan is not None and parsed.plan.steps[0].step == "call"
    assert {c.type for c in parsed.conditions} >= {"Planned", "Ready"}
    assert parsed.observed is None


def test_a_full_reconcile_plans_with_what_was_learned() -> None:
    """The rate and the corrections in status.replan reach the plan and the Deployments; in
    advisory mode they do not."""
    from agentgraph.controller import reconcile as rc
    from test_reconcile import FakeCluster, world

    for mode, learned_applies in (("auto", True), ("advisory", False)):
        graph = make_graph([tool("call", latency=0.2)], sla=1, rate=5, name="g")
        obj = graph.model_dump(by_alias=True, exclude_none=True, mode="json")
        obj["spec"]["replan"] = {"mode": mode}
        obj["metadata"].update(namespace="ns", uid="u", generation=1)
        cluster = FakeCluster(obj)
        w = world()
        rc.reconcile(cluster, cluster.graph("ns", "g"), w)  # type: ignore[arg-type]
        first = status.parse(cluster.graph_obj["status"]).plan
        assert first is not None and first.planned_requests_per_second == 5
        pool = first.steps[0].pool
        cluster.graph_obj["status"]["replan"] = {
            "mode": mode, "plannedRequestsPerSecond": 900,
            "corrections": [{"step": "call", "phase": "run", "pool": pool, "factor": 6.0}]}
        rc.reconcile(cluster, cluster.graph("ns", "g"), w, move_cost=0.1)  # type: ignore[arg-type]
        after = status.parse(cluster.graph_obj["status"]).plan
        assert after is not None
        deployment = cluster.objects[("Deployment", "g-call")]
        if learned_applies:
            assert after.planned_requests_per_second == 900
            assert after.steps[0].pool != pool  # 6x slower there: 1.2 s misses the SLA
            assert deployment["spec"]["replicas"] == after.steps[0].replicas > 1
        else:
            assert after == first and deployment["spec"]["replicas"] == 1


def test_a_correction_on_the_decode_pool_moves_only_decode() -> None:
    """Prefill and decode are corrected apart: a decode pool slower than its profile loses
    the decode phase, and the prefill stays where it was."""
    from builders import llm, shipped_profiles

    graph = make_graph([llm("chat", input_tokens=2048, output_tokens=256)], sla=10, rate=2,
                       ttftSeconds=1.0, tbtSeconds=0.05)
    profiles = shipped_profiles()
    plain = {a.phase: a for a in solve.plan(graph, profiles).assignments}
    decode_pool = plain["decode"].pool
    shot = ClusterSnapshot.from_profiles(profiles, CostSettings(), corrections={
        ("chat", "decode", decode_pool): 20.0})
    moved = {a.phase: a for a in solve.plan(graph, profiles, snapshot=shot).assignments}
    assert moved["decode"].pool != decode_pool
    assert moved["prefill"].pool == plain["prefill"].pool
