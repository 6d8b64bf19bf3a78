"""One replanner pass over one graph: measure (Prometheus) -> decide (planner/replan.py, pure)
-> say it (status, events). The FULL reconcile then plans with what was learned.

What was learned lives in the graph's status (``status.replan``), so it survives an operator
restart and a FULL reconcile (the resync too) always plans with the same figures. The pass
writes the status only when something a person would read changed (the decision, a condition,
or a measured figure by more than ``CHANGE``), not every interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentgraph.api.graph import AgentGraph
from agentgraph.api.status import (
    AgentGraphStatus,
    ConditionType,
    Correction,
    Observed,
    Reason,
    Replan,
    StepObservation,
)
from agentgraph.controller import status
from agentgraph.controller.prometheus import Prometheus, Unavailable
from agentgraph.planner import replan
from agentgraph.planner.replan import Learned, Measurement, ReplanSettings
from agentgraph.planner.snapshot import Slot

log = logging.getLogger("agentgraph.replan")
CHANGE = 0.10  # a measured figure moving less than this does not rewrite the status
REFRESH_S = 300.0  # ... unless the shown measurement is older than this


@dataclass(frozen=True)
class Planning:
    """What a FULL reconcile plans with, from the status: the corrections and the rate."""

    corrections: Mapping[Slot, float]
    rate: float | None  # the spec's target, or the measured rate with headroom


@dataclass(frozen=True)
class PassOutcome:
    status: dict[str, Any]  # the status as it now stands
    written: bool
    replan: bool  # auto mode and the decision changed what is planned: run FULL now
    decision: str


def _epoch(at: str | None) -> float | None:
    if not at:
        return None
    try:
        return datetime.strptime(at, status.TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(status.TIME_FORMAT)


def learned(st: AgentGraphStatus) -> Learned:
    r = st.replan
    if r is None:
        return Learned()
    return Learned(corrections={(c.step, c.phase, c.pool): c.factor for c in r.corrections},
                   planned_rate=r.planned_requests_per_second,
                   last_change=_epoch(r.last_change_time), breaches=r.breach_passes)


def planning(graph: AgentGraph, st: Mapping[str, Any] | None) -> Planning:
    """The measured figures a FULL reconcile plans with: only in auto mode."""
    if graph.spec.replan.mode != "auto":
        return Planning({}, graph.spec.sla.target_requests_per_second)
    memory = learned(status.parse(st))
    rate = replan.planning_rate(memory, graph.spec.sla.target_requests_per_second)
    return Planning(dict(memory.corrections), rate)


def _replan_status(mode: str, memory: Learned, decision: str, keep: Replan | None) -> Replan:
    return Replan(
        mode=mode,
        corrections=[Correction(step=k[0], phase=k[1], pool=k[2],
                                factor=round(v, 4))
                     for k, v in sorted(memory.corrections.items())],
        planned_requests_per_second=(None if memory.planned_rate is None
                                     else round(memory.planned_rate, 4)),
        last_change_time=None if memory.last_change is None else _iso(memory.last_change),
        breach_passes=memory.breaches,
        decision=decision,
        recommended=keep.recommended if keep else None,
        saving_per_hour=keep.saving_per_hour if keep else None)


def observed(m: Measurement, percentile: float, at: str) -> Observed:
    def r(x: float) -> float:
        return float(f"{x:.4g}")

    return Observed(
        time=at, window_seconds=m.window_seconds, requests_per_second=r(m.rate),
        latency_seconds=None if m.latency is None else r(m.latency), percentile=percentile,
        steps=[StepObservation(step=s.step, phase=s.phase, pool=s.pool,
                               measured_seconds=r(s.mean_seconds),
                               predicted_seconds=r(s.predicted_seconds),
                               calls_per_second=r(s.calls / m.window_seconds))
               for s in m.slots])


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=CHANGE, abs_tol=1e-3)


def _same_measurement(a: Observed | None, b: Observed | None, now: float) -> bool:
    """Whether ``b`` says nothing new against the shown ``a``."""
    if a is None or b is None:
        return a is b
    age = now - (_epoch(a.time) or 0.0)
    if age > REFRESH_S or len(a.steps) != len(b.steps):
        return False
    return (_close(a.requests_per_second, b.requests_per_second)
            and _close(a.latency_seconds, b.latency_seconds)
            and all((x.step, x.phase, x.pool) == (y.step, y.phase, y.pool)
                    and _close(x.measured_seconds, y.measured_seconds)
                    for x, y in zip(a.steps, b.steps, strict=True)))


def run_pass(graph: AgentGraph, obj: Mapping[str, Any], prometheus: Prometheus | None,
             window_seconds: float, settings: ReplanSettings, now: float,
             recommend: Any = None) -> PassOutcome:
    """One pass. ``recommend(learned) -> (summary, saving)`` plans without applying
    (advisory mode). Returns the status to write (the caller writes it and sends events)."""
    previous = obj.get("status") or {}
    prev = status.parse(previous)
    at = _iso(now)
    mode = graph.spec.replan.mode
    memory = learned(prev)
    if mode == "off":  # no measurement is shown, and SLAMet goes back to the prediction
        unmeasured = {k: v for k, v in previous.items() if k != "observed"}
        new = status.with_measurement(unmeasured, None, _replan_status(
            "off", Learned(), "spec.replan.mode is off: planned from the spec only", None),
            None, at)
        new.pop("observed", None)
        new["conditions"] = [c for c in new["conditions"]
                             if c["type"] != ConditionType.METRICS_UNAVAILABLE]
        return _outcome(previous, new, False, "off")
    if prometheus is None:
        why = (Reason.PROMETHEUS_NOT_CONFIGURED,
               "the operator has no prometheusUrl setting (chart value prometheus.url): the "
               "plan comes from the spec only")
        new = status.with_measurement(previous, None, _replan_status(
            mode, memory, "no measurements: Prometheus is not configured", prev.replan), why, at)
        return _outcome(previous, new, False, "not configured")
    try:
        m = prometheus.measure(obj["metadata"]["namespace"], graph.metadata.name,
                               graph.spec.sla.percentile, window_seconds)
    except Unavailable as e:
        why = (Reason(e.reason), f"{e.message}; the current plan is kept")
        new = status.with_measurement(previous, None, _replan_status(
            mode, memory, f"no fresh measurement ({e.reason}): the plan is kept", prev.replan),
            why, at)
        return _outcome(previous, new, False, e.message)
    decision = replan.decide(memory, m, graph.spec.sla.target_requests_per_second,
                             graph.spec.sla.latency_seconds, now, settings,
                             applied=None if mode == "auto" else {})
    shown = observed(m, graph.spec.sla.percentile, at)
    if _same_measurement(prev.observed, shown, now) and not decision.changed:
        shown = prev.observed  # type: ignore[assignment]
    keep = prev.replan
    if mode == "advisory" and decision.changed and recommend is not None:
        summary, saving = recommend(decision.learned)
        keep = Replan(mode="advisory", recommended=summary, saving_per_hour=saving)
    # The decision shown is the last change and why, until the next one.
    text = decision.summary if decision.changed or memory.last_change is None or not (
        prev.replan and prev.replan.decision) else prev.replan.decision
    new = status.with_measurement(previous, shown,
                                  _replan_status(mode, decision.learned, text, keep), None, at)
    return _outcome(previous, new, decision.changed and mode == "auto", decision.summary)


def _outcome(previous: Mapping[str, Any], new: dict[str, Any], again: bool, decision: str
             ) -> PassOutcome:
    return PassOutcome(status=new, written=status.changed(previous, new), replan=again,
                       decision=decision)
