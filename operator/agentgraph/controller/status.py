"""An AgentGraph's status (api/status.py) built from a plan, a rollout and the replanner's
measurements. Pure.

Built typed, written as the wire dict (camelCase, no nulls); what was written is read back with
``parse``. The FULL reconcile owns the plan and Planned/Infeasible/Ready; the replanner owns
``observed``, ``replan`` and MetricsUnavailable; SLAMet is measured when a fresh measurement
exists and predicted otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic

from agentgraph.api.plan import Plan
from agentgraph.api.status import (
    Admission,
    AgentGraphStatus,
    Condition,
    ConditionType,
    HardwareProfileStatus,
    Observed,
    PlanSummary,
    Reason,
    Replan,
    StepPlacement,
)

Wire = dict[str, Any]


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what Kubernetes writes in conditions


def now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def parse(st: Mapping[str, Any] | None) -> AgentGraphStatus:
    """The status as the cluster holds it. A part this operator cannot read (another version
    wrote it) is left out, part by part: a bad condition does not lose the plan."""
    raw = dict(st or {})
    try:
        return AgentGraphStatus.model_validate(raw)
    except pydantic.ValidationError:
        pass
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "conditions" and isinstance(value, list):
            good = []
            for c in value:
                try:
                    good.append(Condition.model_validate(c))
                except pydantic.ValidationError:
                    continue
            kept[key] = good
            continue
        try:
            AgentGraphStatus.model_validate({key: value})
        except pydantic.ValidationError:
            continue
        kept[key] = value
    return AgentGraphStatus.model_validate(kept)


def dump(st: AgentGraphStatus | HardwareProfileStatus) -> Wire:
    out: Wire = st.model_dump(by_alias=True, exclude_none=True, mode="json")
    return out


def condition(type_: ConditionType, status: bool, reason: Reason, message: str,
              generation: int | None, previous: Sequence[Condition], at: str) -> Condition:
    value = "True" if status else "False"
    old = next((c for c in previous if c.type is type_), None)
    since = old.last_transition_time if old and old.status == value else at
    return Condition(type=type_, status=value, reason=reason, message=message,
                     observed_generation=generation, last_transition_time=since)


def condition_status(st: Mapping[str, Any], type_: str) -> str | None:
    """The status ("True"/"False") of condition ``type_`` in a wire status, or None."""
    conditions = st.get("conditions")
    return next((c.get("status") for c in (conditions if isinstance(conditions, list) else [])
                 if isinstance(c, Mapping) and c.get("type") == type_), None)


def condition_message(st: Mapping[str, Any], type_: str) -> str:
    """The message of condition ``type_`` in a wire status, or ""."""
    conditions = st.get("conditions")
    return next((str(c.get("message", "")) for c in (conditions if isinstance(conditions, list)
                                                    else [])
                 if isinstance(c, Mapping) and c.get("type") == type_), "")


def _round(value: float | None, digits: int = 4) -> float | None:
    """Status is for people and printer columns: 4 significant digits, not 16."""
    return None if value is None else float(f"{value:.{digits}g}")


def summary(plan: Plan, planned_rate: float | None = None) -> PlanSummary:
    return PlanSummary(
        pools=",".join(sorted({a.pool for a in plan.assignments})),
        latency_seconds=_round(plan.latency_seconds),
        sla_seconds=plan.sla_seconds,
        cost_per_hour=_round(plan.cost_per_hour),
        cost_per_request=_round(plan.cost_per_request),
        solver_status=plan.solver_status,
        planned_requests_per_second=_round(planned_rate),
        steps=[StepPlacement(step=a.step, phase=a.phase, pool=a.pool,
                             tensor_parallel=a.tensor_parallel, batch=a.batch,
                             units_per_replica=a.units_per_replica, replicas=a.replicas,
                             latency_seconds=_round(a.latency_seconds),
                             cost_per_hour=_round(a.cost_per_hour), server=a.server)
               for a in plan.assignments])


def _sla(plan: PlanSummary | None, observed: Observed | None, metrics_ok: bool,
         generation: int | None, old: Sequence[Condition], at: str) -> Condition:
    if plan is not None and metrics_ok and observed is not None \
            and observed.latency_seconds is not None:
        met = observed.latency_seconds <= plan.sla_seconds
        return condition(
            ConditionType.SLA_MET, met, Reason.MEASURED if met else Reason.MEASURED_OVER,
            f"p{observed.percentile:g} {observed.latency_seconds:.3g} s over the last "
            f"{observed.window_seconds:g} s against the {plan.sla_seconds:g} s SLA "
            f"({observed.requests_per_second:.3g} requests/s)", generation, old, at)
    met = bool(plan is not None and plan.latency_seconds is not None
               and plan.latency_seconds <= plan.sla_seconds)
    why = ("no measurement (see MetricsUnavailable)" if not metrics_ok
           else "no requests measured in the last window")
    return condition(ConditionType.SLA_MET, met,
                     Reason.PREDICTED if met else Reason.NOT_PREDICTED,
                     f"predicted by the planner; {why}", generation, old, at)


def _metrics_ok(old: Sequence[Condition]) -> bool:
    found = next((c for c in old if c.type is ConditionType.METRICS_UNAVAILABLE), None)
    return found is not None and found.status == "False"


def _sorted(conditions: Sequence[Condition]) -> list[Condition]:
    return sorted(conditions, key=lambda c: c.type.value)


def build(
    previous: Mapping[str, Any] | None,
    generation: int | None,
    plan: Plan | None,
    problems: Sequence[str],
    ready: bool,
    at: str | None = None,
    planned_rate: float | None = None,
    admission: Admission | None = None,
    waiting: tuple[Reason, str] | None = None,
) -> Wire:
    """The whole status after a FULL reconcile. ``problems`` non-empty means Infeasible (invalid
    spec or no plan). ``waiting`` (with ``admission``): the spec is fine but the shared pools or
    the namespace's budget have no room for it now. The replanner's parts are kept as they
    were; without ``admission`` so is the admission."""
    at = at or now()
    prev = parse(previous)
    old = prev.conditions
    feasible = plan is not None and plan.feasible and not problems and waiting is None
    reasons = sorted(problems) if problems else []
    shown = summary(plan, planned_rate) if feasible and plan is not None else prev.plan
    if waiting is not None:
        infeasible = condition(ConditionType.INFEASIBLE, False, Reason.WAITING,
                               "the spec can be planned; see the Admitted condition",
                               generation, old, at)
        planned = condition(ConditionType.PLANNED, False, Reason.WAITING,
                            "waiting for admission: see the Admitted condition", generation,
                            old, at)
    else:
        infeasible = condition(ConditionType.INFEASIBLE, not feasible,
                               Reason.NO_FEASIBLE_PLAN if not feasible else Reason.PLANNED,
                               "\n".join(reasons), generation, old, at)
        planned = condition(ConditionType.PLANNED, feasible,
                            Reason.PLANNED if feasible else Reason.NO_FEASIBLE_PLAN,
                            "" if feasible else "see the Infeasible condition", generation,
                            old, at)
    admitted: list[Condition] = [c for c in old if c.type is ConditionType.ADMITTED]
    if admission is not None and waiting is None and problems and not admission.holds:
        admitted = [condition(ConditionType.ADMITTED, False, Reason.NO_FEASIBLE_PLAN,
                              "holds nothing: see the Infeasible condition", generation, old,
                              at)]
    elif admission is not None:
        admitted = [condition(ConditionType.ADMITTED, waiting is None,
                              waiting[0] if waiting else Reason.ADMITTED,
                              waiting[1] if waiting else admitted_message(admission),
                              generation, old, at)]
    conditions = [
        infeasible,
        planned,
        *admitted,
        condition(ConditionType.READY, feasible and ready,
                  Reason.AVAILABLE if feasible and ready else
                  (Reason.PROGRESSING if feasible else Reason.NO_FEASIBLE_PLAN), "",
                  generation, old, at),
        _sla(shown if feasible else None, prev.observed, _metrics_ok(old), generation, old, at),
        *(c for c in old if c.type is ConditionType.METRICS_UNAVAILABLE),
        *(condition(ConditionType.RECONCILE_ERROR, False, Reason.RECONCILED, "", generation,
                    old, at)
          for c in old if c.type is ConditionType.RECONCILE_ERROR),  # a FULL went through
    ]
    # An invalid or infeasible spec keeps showing the last good plan: nothing is torn down.
    return dump(AgentGraphStatus(observed_generation=generation, conditions=_sorted(conditions),
                                 plan=shown, observed=prev.observed, replan=prev.replan,
                                 admission=admission if admission is not None
                                 else prev.admission))


def admitted_message(admission: Admission) -> str:
    """What an admitted graph holds, in a line."""
    held = ", ".join(f"{h.pool} {h.units:g} units/{h.pods:g} pods" for h in admission.holds)
    return f"holds {held or 'nothing'}; ${admission.cost_per_hour or 0:.4g}/hour"


def with_admission(previous: Mapping[str, Any], admission: Admission, generation: int | None,
                   at: str | None = None, waiting: tuple[Reason, str] | None = None) -> Wire:
    """The status the moment a graph is admitted, before any of its children exists: its hold
    and Admitted=True; or, with ``waiting``, Admitted=False and why. The rest (plan, Ready)
    follows from its reconcile."""
    at = at or now()
    prev = parse(previous)
    conditions = [c for c in prev.conditions if c.type is not ConditionType.ADMITTED]
    conditions.append(condition(ConditionType.ADMITTED, waiting is None,
                                waiting[0] if waiting else Reason.ADMITTED,
                                waiting[1] if waiting else admitted_message(admission),
                                generation, prev.conditions, at))
    return dump(prev.model_copy(update={"conditions": _sorted(conditions),
                                        "admission": admission}))


def with_error(previous: Mapping[str, Any] | None, message: str, generation: int | None,
               at: str | None = None) -> Wire:
    """The same status with ReconcileError=True and ``message``: the rest stays as the last
    good reconcile left it."""
    at = at or now()
    prev = parse(previous)
    conditions = [c for c in prev.conditions if c.type is not ConditionType.RECONCILE_ERROR]
    conditions.append(condition(ConditionType.RECONCILE_ERROR, True, Reason.UNEXPECTED_ERROR,
                                message, generation, prev.conditions, at))
    return dump(prev.model_copy(update={"conditions": _sorted(conditions)}))


def with_ready(previous: Mapping[str, Any], ready: bool, at: str | None = None) -> Wire:
    """The same status with Ready recomputed: for a child's status change, when nothing was
    replanned (the plan and the other conditions stay as they are)."""
    at = at or now()
    prev = parse(previous)
    conditions = [c for c in prev.conditions if c.type is not ConditionType.READY]
    conditions.append(condition(ConditionType.READY, ready,
                                Reason.AVAILABLE if ready else Reason.PROGRESSING, "",
                                prev.observed_generation, prev.conditions, at))
    return dump(prev.model_copy(update={"conditions": _sorted(conditions)}))


def with_measurement(previous: Mapping[str, Any], observed: Observed | None, replan: Replan,
                     unavailable: tuple[Reason, str] | None, at: str | None = None) -> Wire:
    """The status after a replanner pass: what it measured (``observed`` None keeps the last
    one), what it learned and decided, MetricsUnavailable (``unavailable``: why), and SLAMet
    from the measurement. The plan is left as it is."""
    at = at or now()
    prev = parse(previous)
    old = prev.conditions
    generation = prev.observed_generation
    observed = observed if observed is not None else prev.observed
    metrics = condition(
        ConditionType.METRICS_UNAVAILABLE, unavailable is not None,
        unavailable[0] if unavailable else Reason.METRICS_FRESH,
        unavailable[1] if unavailable else "", generation, old, at)
    planned = next((c for c in old if c.type is ConditionType.PLANNED), None)
    plan = prev.plan if planned is not None and planned.status == "True" else None
    conditions = [c for c in old if c.type not in (ConditionType.METRICS_UNAVAILABLE,
                                                   ConditionType.SLA_MET)]
    conditions += [metrics, _sla(plan, observed, unavailable is None, generation, old, at)]
    return dump(prev.model_copy(update={"conditions": _sorted(conditions),
                                        "observed": observed, "replan": replan}))


def changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return dict(previous or {}) != dict(new)


def profile_status(previous: Mapping[str, Any] | None, problems: Sequence[str],
                   generation: int | None, at: str | None = None) -> Wire:
    """A HardwareProfile's status: Valid, or not with every problem (sorted, one per line)."""
    at = at or now()
    prev = HardwareProfileStatus.model_validate(previous or {})
    valid = condition(ConditionType.VALID, not problems,
                      Reason.VALID if not problems else Reason.INVALID,
                      "\n".join(sorted(problems)), generation, prev.conditions, at)
    return dump(HardwareProfileStatus(observed_generation=generation, conditions=[valid]))
