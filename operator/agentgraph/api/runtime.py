"""The running graph's wire shapes: what the operator hands the gateway and each worker, and the
step contract between them.

Step contract (every worker, ours or a user's container):
  POST /v1/run      {"inputs": {<upstream step>: <its output>, ...}, "request": <the request>,
                     "iteration": <loop iteration, 0 first>, "stream": <bool>,
                     "step": <the step called: a shared model server serves several>}
                    -> 200 {"output": <any JSON>}       (a loop head may add "continue": true)
                    -> 4xx/5xx {"error": {"reason": "..."}}
  GET  /healthz     200 while the process lives          (liveness)
  GET  /readyz      200 once it can serve, 503 before and while it drains (readiness)
  GET  /metrics     Prometheus text format (on the metrics port)
Headers: ``X-Agentgraph-Timeout-Ms`` (the time left, relative, so clocks need not agree: a worker
gives up at its deadline and answers 504) and ``X-Request-Id``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentgraph.api.common import ApiModel
from agentgraph.api.graph import Step, StepKind
from agentgraph.api.hardware import HardwareProfile

Phase = Literal["run", "prefill", "decode"]
TIMEOUT_HEADER = "x-agentgraph-timeout-ms"
REQUEST_ID_HEADER = "x-request-id"
RUN_PATH = "/v1/run"
KV_PATH = "/v1/kv/"  # a prefill worker serves the KV cache it made, for the decode worker
WORKER_CONFIG_ENV = "AGENTGRAPH_WORKER_CONFIG"
CONFIG_KEY = "graph.json"  # the RuntimeGraph in the graph's runtime ConfigMap
CORPUS_ENV = "AGENTGRAPH_CORPUS"
HTTP_PORT = 8080
MAX_MEMBERS = 512  # steps one shared server may serve
METRICS_PORT = 9090
GATEWAY_PORT = 8080


class LoopRole(ApiModel):
    """Set on the worker heading a loop: how often the loop runs (the emulator decides with it
    when to stop; a real step says so itself)."""

    expected_iterations: float
    max_iterations: int


class KVHandoff(ApiModel):
    """Set on a decode worker whose prefill runs in another pool: the planner's transfer."""

    from_pool: str
    bytes: float
    predicted_seconds: float


class WorkerConfig(ApiModel):
    """One step phase's worker: passed as JSON in the pod's environment."""

    graph: str
    namespace: str
    step: str  # flattened name ("agent.step" inside sub-agents)
    phase: Phase
    kind: StepKind
    pool: str
    emulate: bool
    tensor_parallel: int
    batch: int
    units_per_replica: float
    predicted_seconds: float  # per visit, at the planned batch
    predicted_tbt_seconds: float | None = None
    spec: Step
    profile: HardwareProfile  # the pool, without its sources
    loop: LoopRole | None = None
    kv: KVHandoff | None = None
    slowdown: float = Field(default=1.0, gt=0)  # emulation only: the pool's measured slowness
    # A shared model server: the other steps it serves, each with its own configuration (the
    # call's "step" says whose it is; this one's own step when absent).
    members: list[WorkerConfig] = Field(default_factory=list, max_length=MAX_MEMBERS)

    def served(self) -> dict[str, WorkerConfig]:
        """Every step this worker serves, by name: its own, then its members'."""
        return {self.step: self, **{m.step: m for m in self.members}}


class PhaseEndpoint(ApiModel):
    """Where one phase of a step runs: the pods the gateway balances over."""

    phase: Phase
    selector: dict[str, str]
    port: int
    pool: str
    predicted_seconds: float
    batch: int
    replicas: int


class RuntimeStep(ApiModel):
    name: str
    kind: StepKind
    depends_on: list[str] = Field(default_factory=list)  # flattened, back edges included
    phases: list[PhaseEndpoint]
    idempotent: bool = False
    retries: int = 0
    timeout_seconds: float | None = None


class RuntimeLoop(ApiModel):
    name: str
    steps: list[str]
    heads: list[str]  # the steps an iteration starts with; the loop is left after them
    body_preds: dict[str, list[str]]  # inside the body, back edges removed
    expected_iterations: float
    max_iterations: int


class RuntimeBlock(ApiModel):
    id: str
    preds: list[str]
    step: str | None = None
    loop: RuntimeLoop | None = None


class RuntimeGraph(ApiModel):
    """The graph as the gateway executes it: blocks in topological order (a step, or a bounded
    loop), the pods of each step phase, and the SLA the deadlines come from."""

    graph: str
    namespace: str
    generation: int | None = None
    sla_seconds: float
    percentile: float
    request_timeout_seconds: float
    max_in_flight: int
    steps: list[RuntimeStep]
    blocks: list[RuntimeBlock]
    sinks: list[str]  # block ids nothing follows: their steps' outputs are the answer
