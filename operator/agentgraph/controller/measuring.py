"""The replanner's pass as the operator runs it: measure and decide (controller/replanning.py),
write the status and the events, and in advisory mode plan a recommendation."""

from __future__ import annotations

from collections.abc import Callable

from agentgraph.api.graph import AgentGraph
from agentgraph.api.status import PlanSummary
from agentgraph.controller import replanning, status
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.config import ReplanConfig
from agentgraph.controller.planning import Obj, World, parse_graph, plan_for
from agentgraph.controller.prometheus import Prometheus
from agentgraph.planner import replan, solve
from agentgraph.planner.errors import PlanningError


def recommend(graph: AgentGraph, obj: Obj, world: World, learned: replan.Learned,
              time_limit: float, keep_within: float, move_cost: float
              ) -> tuple[PlanSummary | None, float | None]:
    """Advisory mode: the plan the measurements call for, and what it saves per hour against
    the running one (negative: it costs more, to meet the SLA). Nothing is applied."""
    measured = replanning.Planning(dict(learned.corrections), replan.planning_rate(
        learned, graph.spec.sla.target_requests_per_second))
    try:
        plan = plan_for(graph, obj, world, measured, time_limit, keep_within, move_cost)
    except PlanningError:
        return None, None
    if not plan.feasible:
        return None, None
    running = status.parse(obj.get("status")).plan
    saving = None
    if running is not None and running.cost_per_hour is not None and plan.cost_per_hour:
        saving = round(running.cost_per_hour - plan.cost_per_hour, 4)
    return status.summary(plan, measured.rate), saving


def measure(cluster: Cluster, obj: Obj, world: Callable[[], World], prometheus: Prometheus | None,
            config: ReplanConfig, now: float, time_limit: float = 30.0,
            keep_within: float = solve.KEEP_WITHIN) -> replanning.PassOutcome | None:
    """A replanner pass: measure, decide, write status and events. Whether a FULL reconcile
    should follow is in the outcome (``replan``). None: nothing to measure (no plan yet, or
    an invalid spec). ``world`` is read only in advisory mode, to plan a recommendation."""
    graph, _ = parse_graph(obj)
    previous = obj.get("status") or {}
    if graph is None or status.condition_status(previous, "Planned") != "True":
        return None

    def advise(learned: replan.Learned) -> tuple[PlanSummary | None, float | None]:
        return recommend(graph, obj, world(), learned, time_limit, keep_within,
                         config.move_cost)

    outcome = replanning.run_pass(graph, obj, prometheus, config.window_seconds,
                                  config.settings(), now, advise)
    if outcome.written:
        meta = obj["metadata"]
        cluster.patch_status(meta["namespace"], meta["name"], outcome.status,
                             previous=obj.get("status") or {})
        _measure_events(cluster, obj, previous, outcome)
    return outcome


def _measure_events(cluster: Cluster, obj: Obj, previous: Obj,
                    outcome: replanning.PassOutcome) -> None:
    new = outcome.status
    was = status.condition_status(previous, "MetricsUnavailable")
    now_ = status.condition_status(new, "MetricsUnavailable")
    if now_ == "True" and was != "True":
        cluster.event(obj, "Warning", "MetricsUnavailable",
                      status.condition_message(new, "MetricsUnavailable"))
    elif now_ == "False" and was == "True":
        cluster.event(obj, "Normal", "MetricsAvailable", "measurements are fresh again")
    if (status.condition_status(new, "SLAMet") == "False"
            and status.condition_status(previous, "SLAMet") != "False"):
        cluster.event(obj, "Warning", "SLAMissed", status.condition_message(new, "SLAMet"))
    old_decision = (previous.get("replan") or {}).get("lastChangeTime")
    replan_ = new.get("replan") or {}
    if replan_.get("lastChangeTime") != old_decision and replan_.get("lastChangeTime"):
        verb = "Recommended" if replan_.get("mode") == "advisory" else "Learned"
        cluster.event(obj, "Normal", verb, str(replan_.get("decision", ""))[:1000])
