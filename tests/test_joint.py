"""Joint re-planning (advisory): all admitted graphs in one MILP on the shared pools."""

import itertools
import math
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from agentgraph.planner import candidates, joint, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import llm, make_graph, make_pool
from test_properties import PROPERTY, SMALL, TOL, scenarios

# One node of cheap fast devices, dearer slow ones and very dear fast ones.
POOLS = [make_pool("fast", price=0.5, tflops=1000, bandwidth=4000, nodes=1),
         make_pool("slow", price=0.4, tflops=150, bandwidth=800, nodes=8),
         make_pool("big", price=6.0, tflops=1000, bandwidth=4000, nodes=8)]
FULL = {p.name: p.spec.pool.nodes * 8.0 for p in POOLS}  # type: ignore[operator]
LOOSE = make_graph([llm("chat", output_tokens=256)], sla=30.0, rate=40.0, name="loose")
TIGHT = make_graph([llm("chat", output_tokens=256)], sla=1.0, rate=40.0, name="tight")


def units(plan: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in plan.assignments:
        out[a.pool] = out.get(a.pool, 0.0) + a.replicas * a.units_per_replica
    return out


def first_come(graphs: list[Any]) -> list[Any]:
    """Each graph planned on what the ones before it left: admission's order."""
    room = dict(FULL)
    plans = []
    for g in graphs:
        plan = solve.plan(g, POOLS, capacity_units=room)
        assert plan.feasible, plan.reasons
        for pool, used in units(plan).items():
            room[pool] -= used
        plans.append(plan)
    return plans


def test_joint_plan_recovers_what_first_come_admission_leaves_on_the_table() -> None:
    loose, tight = first_come([LOOSE, TIGHT])
    members = [joint.Member("ns/loose", LOOSE, loose.cost_per_hour or 0.0,
                            placed=joint.placement(loose)),
               joint.Member("ns/tight", TIGHT, tight.cost_per_hour or 0.0,
                            placed=joint.placement(tight))]
    report = joint.plan_jointly(members, POOLS, capacity_units=FULL)
    assert report.status == "optimal"
    assert math.isclose(report.first_come_total, (loose.cost_per_hour or 0)
                        + (tight.cost_per_hour or 0))
    # The loose graph, first in line, took the cheap fast node the tight one needed.
    assert report.saving > 0.2 * report.first_come_total, (report.first_come_total,
                                                           report.joint_total)
    used: dict[str, float] = {}
    for row, graph in zip(report.rows, (LOOSE, TIGHT), strict=True):
        assert row.plan.feasible
        assert (row.plan.latency_seconds or 0) <= graph.spec.sla.latency_seconds * (1 + TOL)
        assert math.isclose(row.joint, row.plan.cost_per_hour or 0)
        for pool, amount in units(row.plan).items():
            used[pool] = used.get(pool, 0.0) + amount
    assert all(amount <= FULL[pool] + 1e-9 for pool, amount in used.items())
    assert report.rows[0].moves and all("->" in m for m in report.rows[0].moves)


def test_one_graph_alone_gets_its_own_optimum() -> None:
    plan = solve.plan(TIGHT, POOLS, capacity_units=FULL)
    report = joint.plan_jointly([joint.Member("ns/tight", TIGHT, plan.cost_per_hour or 0.0)],
                                POOLS, capacity_units=FULL)
    assert math.isclose(report.joint_total, plan.cost_per_hour or 0.0, rel_tol=TOL)
    assert report.saving == 0 or math.isclose(report.saving, 0.0, abs_tol=1e-9)


def test_a_graph_without_a_target_rate_is_left_out_with_why() -> None:
    per_request = make_graph([llm("chat")], sla=5.0, name="batch")
    report = joint.plan_jointly([joint.Member("ns/batch", per_request, 0.0),
                                 joint.Member("ns/tight", TIGHT, 10.0)], POOLS,
                                capacity_units=FULL)
    assert [k for k, _ in report.left_out] == ["ns/batch"]
    assert "targetRequestsPerSecond" in report.left_out[0][1]
    assert [r.key for r in report.rows] == ["ns/tight"]


@PROPERTY
@given(scenarios(), scenarios(), st.integers(1, 3))
def test_joint_equals_brute_force_over_both_graphs(first: Any, second: Any, nodes: int) -> None:
    """Two random graphs on the first one's pools, each pool a few nodes: the joint optimum is
    the cheapest pair of feasible plans whose summed use fits every pool."""
    (a, pools), (b, _) = first, second
    assume(a.spec.sla.target_requests_per_second and b.spec.sla.target_requests_per_second)
    cap = {p.name: nodes * p.spec.pool.devices_per_node * (p.spec.cores if p.spec.device_type
                                                           == "cpu" else 1) for p in pools}
    snapshot = ClusterSnapshot.from_profiles(pools, SMALL, capacity_units=cap)
    sides = []
    for g in (a, b):
        model = graph_model.build(g)
        options = candidates.build(model, snapshot, SMALL, prune=False)
        slots = [(n, ph) for n, so in options.items() for ph in so.slots]
        choices = [options[n].slots[ph] for n, ph in slots]
        assume(all(choices))
        feasible = []
        for combo in itertools.product(*choices):
            ev = evaluate(model, options, dict(zip(slots, combo, strict=True)), snapshot)
            if ev.feasible:
                feasible.append(ev)
            assume(len(feasible) <= 400)
        sides.append(feasible)
    best = math.inf
    for ea, eb in itertools.product(*sides):
        if all(ea.usage.get(k, 0) + eb.usage.get(k, 0) <= limit * (1 + TOL) + 1e-9
               for k, limit in snapshot.capacities().items()):
            best = min(best, ea.objective + eb.objective)
    report = joint.plan_jointly([joint.Member("a", a, 0.0), joint.Member("b", b, 0.0)], pools,
                                SMALL, capacity_units=cap)
    if math.isinf(best):
        assert not report.rows
    else:
        assert report.status == "optimal", report.status
        assert math.isclose(report.joint_total, best, rel_tol=1e-5), (report.joint_total, best)
