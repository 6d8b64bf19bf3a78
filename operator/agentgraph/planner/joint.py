"""Joint re-planning, advisory: every admitted graph planned at once on the shared pools.

Admission is first come, first served: each graph is planned against what the ones before it
left, so a graph that arrived first with a loose SLA may sit on the cheap fast devices that a
later graph with a tight SLA needed, pushing that one onto dearer hardware. One MILP over all of
them (each graph's own configuration and SLA rows, the pools' capacity rows summed over all
graphs: ``milp.solve_joint``) gives the cheapest placement they could share, and so what
first-come admission leaves on the table. Nothing is applied: this is a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import Plan
from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates, milp, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.errors import PlanningError
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.snapshot import ClusterSnapshot, Slot


@dataclass(frozen=True)
class Member:
    """One admitted graph: its spec (sized at the rate it is planned for), the replanner's
    corrections, and what its first-come plan costs ($/hour) and places."""

    key: str  # namespace/name
    graph: AgentGraph
    first_come: float
    corrections: Mapping[Slot, float] = field(default_factory=dict)
    placed: Mapping[str, str] = field(default_factory=dict)  # "step[/phase]" -> "pool TPn xR"


@dataclass(frozen=True)
class Row:
    key: str
    first_come: float
    joint: float
    plan: Plan
    moves: list[str]  # "step[/phase]: before -> after"


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    left_out: list[tuple[str, str]]  # (key, why): not part of the joint plan
    status: str  # the solver's: "optimal" (within milp.MIP_REL_GAP), or why not
    seconds: float

    @property
    def first_come_total(self) -> float:
        return sum(r.first_come for r in self.rows)

    @property
    def joint_total(self) -> float:
        return sum(r.joint for r in self.rows)

    @property
    def saving(self) -> float:
        return self.first_come_total - self.joint_total


def placement(plan: Plan) -> dict[str, str]:
    """A plan's placement as "step[/phase]" -> "pool TPn xR" (what ``moves`` compares)."""
    return {a.step + (f"/{a.phase}" if a.phase else ""):
            f"{a.pool} TP{a.tensor_parallel} x{a.replicas}" for a in plan.assignments}


def plan_jointly(
    members: Sequence[Member],
    profiles: Sequence[HardwareProfile],
    settings: CostSettings | None = None,
    capacity_units: Mapping[str, float] | None = None,
    capacity_pods: Mapping[str, float] | None = None,
    capacity_block: Mapping[str, float] | None = None,
    time_limit: float = 60.0,
) -> Report:
    """The cheapest placement of all ``members`` together on pools of ``capacity_*`` (what the
    members share: free capacity as if none of them ran). A member that cannot take part (no
    target rate, so no $/hour; a spec that no longer plans) is left out, with why."""
    settings = settings or CostSettings()
    left_out: list[tuple[str, str]] = []
    problems = []
    for m in members:
        if not m.graph.spec.sla.target_requests_per_second:
            left_out.append((m.key, "no sla.targetRequestsPerSecond: its cost is per request"))
            continue
        shot = ClusterSnapshot.from_profiles(profiles, settings, capacity_units, capacity_pods,
                                             capacity_block, corrections=m.corrections)
        try:
            model = graph_model.build(m.graph)
            graph_model.check_pools(model, shot.names)
        except PlanningError as e:
            left_out.append((m.key, "; ".join(str(i) for i in e.issues)))
            continue
        options = candidates.build(model, shot, settings)
        problems.append((m, model, options, shot))
    if not problems:
        return Report([], left_out, "nothing to plan", 0.0)
    shared = problems[0][3]  # the capacities are the same in each member's snapshot
    result = milp.solve_joint([(model, options) for _, model, options, _ in problems], shared,
                              time_limit)
    if result.selections is None:
        return Report([], left_out, result.status, result.seconds)
    rows = []
    for (m, model, options, shot), selection in zip(problems, result.selections, strict=True):
        ev = evaluate(model, options, selection, shot)
        plan = solve.render(model, options, selection, ev, shot)
        after = placement(plan)
        moved = [f"{k}: {m.placed.get(k, 'none')} -> {after.get(k, 'none')}"
                 for k in sorted(set(m.placed) | set(after)) if m.placed.get(k) != after.get(k)]
        rows.append(Row(m.key, m.first_come, ev.objective, plan, moved))
    return Report(rows, left_out, result.status, result.seconds)
