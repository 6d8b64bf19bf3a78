"""An AgentGraph's status, typed: what the operator writes and reads back (the CRD's status
schema is generated from it).

Conditions (sorted by type; ``lastTransitionTime`` changes only when the status value does):
  Planned             True when a feasible plan exists for the current spec and cluster
  Infeasible          True when the spec is invalid or nothing meets it (reasons sorted)
  Ready               every Deployment of the plan has all its replicas available
  SLAMet              measured: the graph's latency percentile within the SLA (from Prometheus);
                      predicted by the planner while there is no measurement
  MetricsUnavailable  True while the replanner cannot read fresh measurements (Prometheus
                      unreachable, not configured, or no samples): the plan is kept as it is
  Admitted            the graph holds room in the shared pools (False: InsufficientCapacity
                      with its queue position, or OverBudget for its namespace)
  Valid               (HardwareProfile) False, with every problem, when the operator cannot
                      use the profile (its pool is then left out of every plan)
  ReconcileError      True while reconciling fails with an error nobody foresaw (an API server
                      refusal, a bug): the message says what; tried again by the next event
                      or the resync. False once a FULL reconcile goes through; absent if
                      none ever failed
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from agentgraph.api.common import ApiModel


class StatusModel(ApiModel):
    """Read back from the cluster: a field an older or newer operator wrote is ignored, not an
    error (the spec's models reject unknown fields; status is ours)."""

    model_config = ConfigDict(extra="ignore")


class ConditionType(StrEnum):
    ADMITTED = "Admitted"
    INFEASIBLE = "Infeasible"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    PLANNED = "Planned"
    READY = "Ready"
    RECONCILE_ERROR = "ReconcileError"
    SLA_MET = "SLAMet"
    VALID = "Valid"


class Reason(StrEnum):
    PLANNED = "Planned"
    NO_FEASIBLE_PLAN = "NoFeasiblePlan"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    PREDICTED = "Predicted"
    NOT_PREDICTED = "NotPredicted"
    MEASURED = "Measured"
    MEASURED_OVER = "MeasuredOverSLA"
    METRICS_FRESH = "MetricsFresh"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    PROMETHEUS_NOT_CONFIGURED = "PrometheusNotConfigured"
    NO_SAMPLES = "NoSamples"
    REPLAN_OFF = "ReplanOff"
    ADMITTED = "Admitted"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    OVER_BUDGET = "OverBudget"
    WAITING = "Waiting"
    UNEXPECTED_ERROR = "UnexpectedError"
    RECONCILED = "Reconciled"
    VALID = "Valid"
    INVALID = "Invalid"


Truth = Literal["True", "False"]


class Condition(StatusModel):
    type: ConditionType
    status: Truth
    reason: Reason
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


class StepPlacement(StatusModel):
    step: str
    phase: Literal["prefill", "decode"] | None = None
    pool: str
    tensor_parallel: int
    batch: int
    units_per_replica: float
    replicas: int
    latency_seconds: float | None = None
    cost_per_hour: float | None = None
    server: str | None = None  # on a shared model server: the step whose objects it is


class PlanSummary(StatusModel):
    pools: str  # comma-joined, sorted: the printer column
    latency_seconds: float | None = None
    sla_seconds: float
    cost_per_hour: float | None = None
    cost_per_request: float | None = None
    solver_status: str | None = None
    # The request rate the replicas were sized for: the spec's target, or the measured rate
    # with headroom when that is higher (replanning).
    planned_requests_per_second: float | None = None
    steps: list[StepPlacement] = Field(default_factory=list, max_length=1024)


class StepObservation(StatusModel):
    step: str
    phase: Literal["run", "prefill", "decode"]
    pool: str
    measured_seconds: float  # mean service time per call over the window (the workers')
    predicted_seconds: float  # what the running plan predicted for it
    calls_per_second: float


class Observed(StatusModel):
    """The last measurement the replanner read from Prometheus."""

    time: str
    window_seconds: float
    requests_per_second: float
    latency_seconds: float | None = None  # end to end, at spec.sla.percentile
    percentile: float
    steps: list[StepObservation] = Field(default_factory=list, max_length=1024)


class Correction(StatusModel):
    """Measured / predicted for one step phase on one pool, smoothed: the next plan multiplies
    the cost model's latency there by ``factor`` (and divides its throughput)."""

    step: str
    phase: Literal["run", "prefill", "decode"]
    pool: str
    factor: float = Field(gt=0)


class Replan(StatusModel):
    """What the replanner learned and decided (it survives an operator restart here)."""

    mode: Literal["auto", "advisory", "off"]
    corrections: list[Correction] = Field(default_factory=list, max_length=1024)
    planned_requests_per_second: float | None = None  # the rate the next plan is sized for
    last_change_time: str | None = None  # the last time learning changed what is planned
    breach_passes: int = 0  # passes in a row over the SLA that nothing learned explains
    decision: str = ""  # why, in one line
    recommended: PlanSummary | None = None  # advisory: the plan it would apply
    saving_per_hour: float | None = None  # advisory: current - recommended, $/hour


class PoolHold(StatusModel):
    pool: str
    units: float  # devices, or cores for CPU pools
    pods: float


class Admission(StatusModel):
    """What the graph holds in the shared pools (the operator's ledger is rebuilt from these),
    or why it waits, and where it stands in the queue."""

    holds: list[PoolHold] = Field(default_factory=list, max_length=64)
    cost_per_hour: float | None = None
    queue_position: int | None = None  # 1: next to be admitted when room frees
    namespace_spend_per_hour: float | None = None  # with this graph's hold
    namespace_budget_per_hour: float | None = None
    empty_cluster_cost_per_hour: float | None = None  # waiting: what it would cost with room


class AgentGraphStatus(StatusModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    plan: PlanSummary | None = None
    observed: Observed | None = None
    replan: Replan | None = None
    admission: Admission | None = None


class HardwareProfileStatus(StatusModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=4)
