"""Plan: what the planner decided, in the shape the CLI prints and the operator writes to status."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentgraph.api.common import ApiModel

Phase = Literal["run", "prefill", "decode"]
ObjectiveName = Literal["costPerHour", "costPerRequest"]


class Objective(ApiModel):
    name: ObjectiveName
    value: float


class Assignment(ApiModel):
    step: str
    phase: Phase | None = None  # set for the two phases of an LLM step
    pool: str
    tensor_parallel: int
    batch: int
    replicas: int
    units_per_replica: float  # devices (accelerators) or cores (CPU) one replica holds
    latency_seconds: float  # per visit of the step
    tbt_seconds: float | None = None
    cost_per_hour: float | None = None  # set when the SLA gives a request rate
    cost_per_request: float
    bound: str  # what limits this configuration: compute, memory, network, io, table
    # On a model server steps share: the step whose objects it is (its first step). That
    # step's assignment holds the server's replicas; the others' hold none, and each
    # assignment's cost is its load's share of the server's.
    server: str | None = None


class Transfer(ApiModel):
    step: str
    from_pool: str = Field(alias="from")
    to_pool: str = Field(alias="to")
    bytes_per_request: float
    latency_seconds: float
    cost_per_request: float


class SharedServer(ApiModel):
    """One model server that steps naming one model share: per model, phase and pool."""

    name: str  # its first step, which names its objects
    model: str  # the model's name and dtype bytes ("llama-8b@2")
    phase: Phase
    pool: str
    tensor_parallel: int
    batch: int
    replicas: int  # sized on the steps' summed load
    units_per_replica: float
    cost_per_hour: float
    steps: list[str]


class Constraint(ApiModel):
    """A constraint of the optimisation and how much room it has left at the optimum."""

    name: str  # e.g. "sla.latencySeconds", "ttft:chat", "capacity:h100"
    limit: float
    value: float
    binding: bool


class Baseline(ApiModel):
    """A plan a user would pick by hand, planned as cheaply as it can be, to compare with.

    ``accelerator``: every accelerated step (LLM, embedding, speech, an accelerated vector
    search) on ``pool``, the CPU steps (tools, compute, a CPU vector search) on the CPU pools.
    ``single-pool``: every step on ``pool``; for a CPU pool, or an accelerator when the graph
    has CPU steps and a CPU pool, listed only where it is feasible. ``unshared``: every pool,
    every step on model servers of its own (listed when steps share servers)."""

    pool: str | None = None  # None for ``unshared``
    kind: Literal["accelerator", "single-pool", "unshared"]
    feasible: bool
    latency_seconds: float | None = None
    objective: float | None = None
    extra: float | None = None  # objective less the plan's: what this choice costs more
    reason: str | None = None


class Alternative(ApiModel):
    """For one step (phase): the cheapest single change of pool, everything else kept."""

    step: str
    phase: Phase | None = None
    chosen_pool: str
    pool: str | None = None  # None: no other pool can take this step
    feasible: bool
    objective: float | None = None  # the whole plan's objective after the change
    delta: float | None = None
    reason: str


class SolveStats(ApiModel):
    """``agentgraph plan --stats``: the model's size before and after each reduction, and where
    the time went (seconds by stage: build, lp, start, milp, then other (candidates, checks,
    output) and total)."""

    configurations: int  # every candidate configuration of every step
    after_bounds: int  # left once too-slow ones are dropped and slack steps fixed
    # Steps merged in series and in parallel (planner/series_parallel.py; only where no pool's
    # capacity enters): the steps, the choices the MILP makes instead, and their options.
    # None when the model was not merged.
    steps: int | None = None
    choices: int | None = None
    after_merging: int | None = None
    after_fixing: int  # left by reduced-cost fixing: what the searches get
    steps_fixed: int  # steps with one configuration left before the search
    rows: int
    lp_bound: float | None = None  # the LP relaxation: no plan costs less
    start: float | None = None  # the first incumbent's objective
    start_from: str  # "running plan", "heuristic" or "none"
    nodes: int  # branch-and-bound nodes, both searches
    seconds: dict[str, float] = Field(default_factory=dict)


class Plan(ApiModel):
    feasible: bool
    objective: Objective | None = None
    latency_seconds: float | None = None  # predicted end to end, loops at expected iterations
    worst_case_latency_seconds: float | None = None  # loops at their maximum iterations
    sla_seconds: float
    cost_per_hour: float | None = None
    cost_per_request: float | None = None
    assignments: list[Assignment] = Field(default_factory=list)
    transfers: list[Transfer] = Field(default_factory=list)
    servers: list[SharedServer] = Field(default_factory=list)
    critical_path: list[str] = Field(default_factory=list)
    constraints: list[Constraint] = Field(default_factory=list)
    baselines: list[Baseline] = Field(default_factory=list)
    alternatives: list[Alternative] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)  # why infeasible, sorted
    # "optimal": proven minimum; "time limit: ...": the best plan found when the solver's time
    # ran out, feasible but not proven optimal.
    solver_status: str | None = None
    # The relative gap HiGHS proved for this plan: at most 1e-4 when "optimal".
    solver_gap: float | None = None
    solve_seconds: float | None = None
    solve_stats: SolveStats | None = None  # only when asked for (``--stats``)
