"""The replan decision: from what was measured to what the next plan is sized and priced for.
Pure: no clock, no Prometheus; the operator passes in the time and the measurement.

Two things are learned, and only they change a plan (with the spec and the cluster):
  * the request rate: the plan is sized for the measured rate times ``headroom`` once the
    measured rate is above what is planned now (scale out at once; the headroom is the band
    that noise stays within), and comes back down, never below the spec's
    target, only when the measured rate with headroom has fallen under ``scale_in_below`` of
    the planned one (scale in only on a clear drop);
  * a correction per (step, phase, pool): measured / predicted service time, smoothed on a log
    scale. The cost model's latency there is multiplied by it, and its throughput divided, so a
    pool slower than its profile says costs more replicas, or loses the step to another pool.
    A ratio within ``correction_band`` of 1 is noise and changes nothing.
  * When the measured latency percentile is over the SLA and neither of those explains it
    (queueing), after ``breach_passes`` passes in a row the planned rate is raised by
    ``headroom`` (more replicas), at most to ``max_pressure`` times the measured rate.
Hysteresis: after any change nothing is learned for ``cooldown_seconds`` (the new pods roll
out and the window fills with their own figures), so noise cannot flap the plan. A cost for
moving is the planner's (``solve.plan(move_cost=...)``): a step changes pool only when that pays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agentgraph.planner.snapshot import Slot

FACTOR_MIN, FACTOR_MAX = 0.1, 20.0


@dataclass(frozen=True)
class ReplanSettings:
    headroom: float = 1.2
    scale_in_below: float = 0.7
    correction_band: float = 0.15
    smoothing: float = 0.7  # weight of the new measurement, on the log scale
    cooldown_seconds: float = 120.0
    min_calls: float = 10.0  # calls of a slot in the window before its ratio counts
    breach_passes: int = 2
    max_pressure: float = 4.0


@dataclass(frozen=True)
class SlotMeasure:
    step: str
    phase: str
    pool: str
    mean_seconds: float  # measured service time per call
    predicted_seconds: float  # what the running plan predicted (corrections included)
    calls: float  # in the window


@dataclass(frozen=True)
class Measurement:
    window_seconds: float
    rate: float  # requests/s through the gateway
    latency: float | None  # end to end at the SLA's percentile; None: no requests
    slots: tuple[SlotMeasure, ...] = ()


@dataclass(frozen=True)
class Learned:
    """What the replanner carries from pass to pass (kept in the graph's status)."""

    corrections: Mapping[Slot, float] = field(default_factory=dict)
    planned_rate: float | None = None  # None: the spec's target
    last_change: float | None = None  # seconds (the operator's clock)
    breaches: int = 0


@dataclass(frozen=True)
class Decision:
    learned: Learned
    changed: bool  # the next plan differs in what it is sized or priced for: replan now
    reasons: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def planning_rate(learned: Learned, spec_rate: float | None) -> float | None:
    """The rate the next plan is sized for: never under the spec's target."""
    if learned.planned_rate is None:
        return spec_rate
    return max(learned.planned_rate, spec_rate or 0.0)


def decide(learned: Learned, m: Measurement, spec_rate: float | None, sla_seconds: float,
           now: float, settings: ReplanSettings | None = None,
           applied: Mapping[Slot, float] | None = None) -> Decision:
    """``applied``: the corrections the running plan was made with, which its predictions
    include (default: the learned ones, as in auto mode; advisory mode applies none)."""
    s = settings or ReplanSettings()
    applied = learned.corrections if applied is None else applied
    if learned.last_change is not None and now - learned.last_change < s.cooldown_seconds:
        return Decision(learned, False, ("cooling down after the last change",))
    reasons: list[str] = []
    corrections = dict(learned.corrections)
    for slot in m.slots:
        key = (slot.step, slot.phase, slot.pool)
        if slot.calls < s.min_calls or slot.predicted_seconds <= 0 or slot.mean_seconds <= 0:
            continue
        # measured / the cost model's own prediction, against what is learned already
        seen = slot.mean_seconds / (slot.predicted_seconds / applied.get(key, 1.0))
        old = corrections.get(key, 1.0)
        ratio = seen / old
        if abs(math.log(ratio)) <= math.log1p(s.correction_band):
            continue
        new = min(FACTOR_MAX, max(FACTOR_MIN, old * ratio ** s.smoothing))
        corrections[key] = new
        label = slot.step + ("" if slot.phase == "run" else f"/{slot.phase}")
        reasons.append(f"{label} on {slot.pool} measured {slot.mean_seconds:.3g} s against "
                       f"{slot.predicted_seconds:.3g} s predicted: correction {old:.3g} -> "
                       f"{new:.3g}")
    current = planning_rate(learned, spec_rate)
    rate = learned.planned_rate
    wanted = m.rate * s.headroom
    if m.rate > 0 and (current is None or m.rate > current * (1 + 1e-9)):
        rate = wanted
        reasons.append(f"measured {m.rate:.3g} requests/s, planned for "
                       f"{_rate(current)}: plan for {wanted:.3g} (headroom {s.headroom:g}x)")
    elif current is not None and learned.planned_rate is not None \
            and wanted < s.scale_in_below * current:
        floor = spec_rate or 0.0
        rate = None if wanted <= floor else wanted
        reasons.append(f"measured {m.rate:.3g} requests/s, planned for {current:.3g}: plan for "
                       f"{max(wanted, floor):.3g}" + (" (the spec's target)" if rate is None
                                                       else ""))
    breaches = learned.breaches
    over = m.latency is not None and m.latency > sla_seconds
    if over and not reasons:
        breaches += 1
        if breaches >= s.breach_passes and m.rate > 0:
            base = planning_rate(replace(learned, planned_rate=rate), spec_rate) or m.rate
            pressed = min(base * s.headroom, s.max_pressure * m.rate)
            if pressed > base * (1 + 1e-9):
                rate = pressed
                reasons.append(f"measured latency {m.latency:.3g} s over the {sla_seconds:g} s "
                               f"SLA for {breaches} passes: plan for {pressed:.3g} requests/s")
                breaches = 0
    elif not over:
        breaches = 0
    changed = bool(reasons)
    out = Learned(corrections=corrections, planned_rate=rate,
                  last_change=now if changed else learned.last_change, breaches=breaches)
    if not changed:  # stable wording: the figures are in the measurement
        reasons = ["over the SLA; waiting for it to persist" if over else
                   "within the SLA; nothing to change" if m.latency is not None else
                   "no requests measured; nothing to change"]
    return Decision(out, changed, tuple(reasons))


def _rate(rate: float | None) -> str:
    return "no rate" if rate is None else f"{rate:.3g}"
