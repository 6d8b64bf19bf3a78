"""Status of an AgentGraph as conditions plus a plan summary. Pure.

Conditions (sorted by type; lastTransitionTime changes only when the status value changes):
  Planned     True when a feasible plan exists for the current spec and cluster
  Infeasible  True when the spec is invalid or nothing meets it (reasons sorted, one per line)
  SLAMet      predicted for now: the plan's latency is within the SLA
  Ready       every Deployment of the plan has all its replicas available
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agentgraph.api.plan import Plan

Condition = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool, reason: str, message: str, generation: int | None,
              previous: Sequence[Condition], at: str) -> Condition:
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else at
    return {"type": type_, "status": value, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}


def condition_status(st: Mapping[str, Any], type_: str) -> str | None:
    """The status ("True"/"False") of condition ``type_`` in a status, or None without it."""
    conditions = st.get("conditions")
    return next((c.get("status") for c in (conditions if isinstance(conditions, list) else [])
                 if isinstance(c, Mapping) and c.get("type") == type_), None)


def _round(value: float | None, digits: int = 4) -> float | None:
    """Status is for people and printer columns: 4 significant digits, not 16."""
    return None if value is None else float(f"{value:.{digits}g}")


def summary(plan: Plan) -> dict[str, Any]:
    return {
        "pools": ",".join(sorted({a.pool for a in plan.assignments})),
        "latencySeconds": _round(plan.latency_seconds),
        "slaSeconds": plan.sla_seconds,
        "costPerHour": _round(plan.cost_per_hour),
        "costPerRequest": _round(plan.cost_per_request),
        "solverStatus": plan.solver_status,
        "steps": [{"step": a.step, **({"phase": a.phase} if a.phase else {}), "pool": a.pool,
                   "tensorParallel": a.tensor_parallel, "batch": a.batch,
                   "unitsPerReplica": a.units_per_replica, "replicas": a.replicas,
                   "latencySeconds": _round(a.latency_seconds),
                   **({"costPerHour": _round(a.cost_per_hour)}
                      if a.cost_per_hour is not None else {})}
                  for a in plan.assignments],
    }


def build(
    previous: Mapping[str, Any] | None,
    generation: int | None,
    plan: Plan | None,
    problems: Sequence[str],
    ready: bool,
    at: str | None = None,
) -> dict[str, Any]:
    """The whole status. ``problems`` non-empty means Infeasible (invalid spec or no plan)."""
    at = at or now()
    old = list((previous or {}).get("conditions", []))
    feasible = plan is not None and plan.feasible and not problems
    reasons = sorted(problems) if problems else []
    met = bool(feasible and plan is not None and plan.latency_seconds is not None
               and plan.latency_seconds <= plan.sla_seconds)
    conditions = [
        condition("Infeasible", not feasible, "NoFeasiblePlan" if not feasible else "Planned",
                  "\n".join(reasons), generation, old, at),
        condition("Planned", feasible, "Planned" if feasible else "NoFeasiblePlan",
                  "" if feasible else "see the Infeasible condition", generation, old, at),
        condition("Ready", feasible and ready, "Available" if feasible and ready else
                  ("Progressing" if feasible else "NoFeasiblePlan"), "", generation, old, at),
        condition("SLAMet", met, "Predicted" if met else "NotPredicted",
                  "predicted by the planner; measured latency comes with replanning",
                  generation, old, at),
    ]
    out: dict[str, Any] = {"observedGeneration": generation,
                           "conditions": sorted(conditions, key=lambda c: c["type"])}
    if feasible and plan is not None:
        out["plan"] = summary(plan)
    elif previous and "plan" in previous:
        out["plan"] = previous["plan"]  # keep showing what runs: nothing is torn down
    return out


def with_ready(previous: Mapping[str, Any], ready: bool, at: str | None = None) -> dict[str, Any]:
    """The same status with Ready recomputed: for a child's status change, when nothing was
    replanned (the plan and the other conditions stay as they are)."""
    at = at or now()
    old = list(previous.get("conditions", []))
    generation = previous.get("observedGeneration")
    conditions = [c for c in old if c.get("type") != "Ready"]
    conditions.append(condition("Ready", ready, "Available" if ready else "Progressing", "",
                                generation, old, at))
    return {**previous, "conditions": sorted(conditions, key=lambda c: c["type"])}


def changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return dict(previous or {}) != dict(new)
