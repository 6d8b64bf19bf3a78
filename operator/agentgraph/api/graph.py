"""AgentGraph: the user's steps, edges, bounded loops and SLA."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)

from agentgraph.api.common import (
    MAX_COUNT,
    ApiModel,
    Fraction,
    Name,
    NonNegativeFloat,
    ObjectMeta,
    PositiveFloat,
)
from agentgraph.api.container import Container
from agentgraph.api.naming import GATEWAY

MAX_STEPS = 512
# A sub-agent's own steps: the CRD checks them with the same CEL rules as top-level steps, and
# the API server's cost budget for those rules bounds how many a list may hold.
MAX_AGENT_STEPS = 128
DTYPE_BYTES = (0.5, 1.0, 2.0, 4.0)


def _memory_gb(default: float) -> float:
    """``memoryGB``, as HardwareProfile spells it; ``memoryGb``, this field's first spelling,
    is still read (and accepted by the CRD)."""
    found: float = Field(default=default, alias="memoryGB",
                         validation_alias=AliasChoices("memoryGB", "memoryGb"))
    return found


def _dtype_bytes(value: float) -> float:
    if value not in DTYPE_BYTES:
        raise ValueError(f"must be one of {', '.join(f'{v:g}' for v in DTYPE_BYTES)} "
                         "(INT4, FP8, FP16/BF16, FP32)")
    return value


# Bytes per weight (and per KV element): 2 for FP16/BF16, 1 for FP8, 0.5 for INT4.
DtypeBytes = Annotated[float, AfterValidator(_dtype_bytes),
                       Field(json_schema_extra={"enum": list(DTYPE_BYTES)})]


class StepKind(StrEnum):
    LLM = "llm"
    EMBEDDING = "embedding"
    VECTOR_SEARCH = "vector-search"
    TOOL = "tool"
    SPEECH_TO_TEXT = "speech-to-text"
    TEXT_TO_SPEECH = "text-to-speech"
    COMPUTE = "compute"
    AGENT = "agent"


# The per-kind block each kind needs, by its field name on the wire.
KIND_FIELD: dict[StepKind, str] = {
    StepKind.LLM: "llm",
    StepKind.EMBEDDING: "embedding",
    StepKind.VECTOR_SEARCH: "vectorSearch",
    StepKind.TOOL: "tool",
    StepKind.SPEECH_TO_TEXT: "speechToText",
    StepKind.TEXT_TO_SPEECH: "textToSpeech",
    StepKind.COMPUTE: "compute",
    StepKind.AGENT: "agent",
}


class PoolConstraints(ApiModel):
    allowed_pools: list[Name] = Field(default_factory=list, max_length=64)
    forbidden_pools: list[Name] = Field(default_factory=list, max_length=64)
    pinned_pool: Name | None = None


class ModelShape(ApiModel):
    name: str | None = None
    parameters_billions: PositiveFloat
    layers: int = Field(ge=1, le=10_000)
    hidden_size: int = Field(ge=1, le=1_048_576)
    heads: int = Field(ge=1, le=65_536)
    kv_heads: int = Field(ge=1, le=65_536)
    dtype_bytes: DtypeBytes = 2.0

    @model_validator(mode="after")
    def _heads(self) -> ModelShape:
        if self.kv_heads > self.heads:
            raise ValueError("kvHeads cannot exceed heads")
        return self


class LLMServer(ApiModel):
    """An OpenAI-compatible server (vLLM, SGLang, TGI) that runs the model: the step's workers
    then adapt the step contract to ``/v1/chat/completions`` instead of emulating the model."""

    url: HttpUrl  # base URL, e.g. http://vllm.llm.svc:8000/v1
    model: str = Field(min_length=1, max_length=256)  # the served model name


class LLMWorkload(ApiModel):
    model: ModelShape
    input_tokens: int = Field(ge=1, le=1_048_576)
    output_tokens: int = Field(ge=1, le=1_048_576)
    ttft_seconds: PositiveFloat | None = None  # overrides spec.sla.ttftSeconds
    tbt_seconds: PositiveFloat | None = None  # overrides spec.sla.tbtSeconds
    # auto: prefill and decode may land on different pools (KV moves between them);
    # colocated: both phases on one pool.
    disaggregation: Literal["auto", "colocated"] = "auto"
    prefill: PoolConstraints | None = None
    decode: PoolConstraints | None = None
    server: LLMServer | None = None  # absent: the workers emulate the model (no GPU needed)
    # With a request rate, LLM steps naming one model (model.name and dtypeBytes) share one
    # prefill and one decode server per pool, sized on their summed load; false: this step
    # gets servers of its own (as does a step with a server or container of its own).
    share_server: bool = True


class SmallModelWorkload(ApiModel):
    """Embedding, speech-to-text and text-to-speech: a small model run once per request."""

    parameters_billions: PositiveFloat
    dtype_bytes: DtypeBytes = 2.0
    tokens: int | None = Field(default=None, ge=1, le=1_048_576)  # embedding: per request
    audio_seconds: PositiveFloat | None = None  # STT: audio in; TTS: audio out
    static_latency_seconds: NonNegativeFloat = 0.0


class ConfigMapKey(ApiModel):
    name: Name
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class VectorSearchWorkload(ApiModel):
    vectors: int = Field(ge=1, le=MAX_COUNT)
    dimensions: int = Field(ge=1, le=65536)
    bytes_per_element: Literal[1, 2, 4] = 4
    scanned_fraction: Fraction = 0.01  # share of the index an ANN query touches
    queries_per_request: int = Field(default=1, ge=1, le=10_000)
    static_latency_seconds: NonNegativeFloat = 0.0005
    accelerated: bool = False  # may run on accelerators (GPU index)
    top_k: int = Field(default=3, ge=1, le=100)  # documents a query returns
    # JSON lines {"id", "text"} the worker embeds and indexes at start-up; absent: the corpus
    # shipped with the worker. Passed as an environment variable: keep it under ~100 KB.
    corpus: ConfigMapKey | None = None


class ToolWorkload(ApiModel):
    """I/O-bound work (web search, an API call): fixed latency, a little CPU, much concurrency."""

    latency_seconds: PositiveFloat
    cpu_cores: PositiveFloat = 0.25
    memory_gb: PositiveFloat = _memory_gb(0.5)
    concurrency: int = Field(default=32, ge=1, le=1_000_000)
    # The call the worker makes: the step's inputs go out as JSON, the answer is the step's
    # output. Absent: the worker emulates the call by waiting latencySeconds.
    url: HttpUrl | None = None
    method: Literal["GET", "POST"] = "POST"


class ComputeWorkload(ApiModel):
    core_seconds: PositiveFloat  # CPU time per request
    max_cores: int = Field(default=1, ge=1, le=256)  # how far one request parallelises
    memory_gb: PositiveFloat = _memory_gb(1.0)


class AgentWorkload(ApiModel):
    """A nested sub-graph; it is flattened into the parent as '<agent>.<step>'."""

    steps: list[Step] = Field(min_length=1, max_length=MAX_AGENT_STEPS)
    loops: list[Loop] = Field(default_factory=list, max_length=16)


class TableEntry(ApiModel):
    """A measured figure for one (phase, pool): the paper's 'give the latency and cost directly'."""

    pool: Name
    phase: Literal["run", "prefill", "decode"] = "run"
    latency_seconds: PositiveFloat
    tbt_seconds: PositiveFloat | None = None  # decode only
    cost_per_request: NonNegativeFloat | None = None
    cost_per_input_token: NonNegativeFloat | None = None
    cost_per_output_token: NonNegativeFloat | None = None
    requests_per_second_per_replica: PositiveFloat | None = None
    tensor_parallel: int = Field(default=1, ge=1, le=72)


class KVTransferEntry(ApiModel):
    from_pool: Name = Field(alias="from")
    to_pool: Name = Field(alias="to")
    latency_seconds: NonNegativeFloat
    cost_per_request: NonNegativeFloat | None = None
    cost_per_input_token: NonNegativeFloat | None = None


class TableModel(ApiModel):
    entries: list[TableEntry] = Field(min_length=1, max_length=256)
    kv_transfer: list[KVTransferEntry] = Field(default_factory=list, max_length=256)


class StepRuntime(ApiModel):
    """How the gateway calls the step."""

    # Safe to call twice with the same inputs: only then does the gateway retry a step that
    # failed after the request reached it (a request that never reached a pod is always
    # retried on another one).
    idempotent: bool = False
    retries: int = Field(default=0, ge=0, le=5)
    timeout_seconds: PositiveFloat | None = None  # cap per call; else the SLA budget left
    emulate: bool | None = None  # None: spec.runtime.emulate

    @model_validator(mode="after")
    def _retries_need_idempotence(self) -> StepRuntime:
        if self.retries and not self.idempotent:
            raise ValueError("retries need idempotent: true (a retried call may run twice)")
        return self


class Step(ApiModel):
    name: Name
    kind: StepKind
    depends_on: list[Name] = Field(default_factory=list, max_length=64)
    cost_model: Literal["default", "table"] = "default"
    table: TableModel | None = None
    constraints: PoolConstraints | None = None
    container: Container | None = None
    runtime: StepRuntime | None = None
    llm: LLMWorkload | None = None
    embedding: SmallModelWorkload | None = None
    vector_search: VectorSearchWorkload | None = None
    tool: ToolWorkload | None = None
    speech_to_text: SmallModelWorkload | None = None
    text_to_speech: SmallModelWorkload | None = None
    compute: ComputeWorkload | None = None
    agent: AgentWorkload | None = None

    @model_validator(mode="after")
    def _one_kind_block(self) -> Step:
        wanted = KIND_FIELD[self.kind]
        present = [
            f for f in KIND_FIELD.values() if getattr(self, _python_name(f)) is not None
        ]
        extra = [f for f in present if f != wanted]
        if extra:
            raise ValueError(f"kind '{self.kind}' takes field '{wanted}', not {extra}")
        if self.cost_model == "table":
            if self.table is None:
                raise ValueError("costModel 'table' needs a 'table' block")
            if self.kind is StepKind.AGENT:
                raise ValueError("an agent step is planned through its sub-steps, not a table")
        elif wanted not in present:
            raise ValueError(f"kind '{self.kind}' needs field '{wanted}'")
        if self.kind is StepKind.SPEECH_TO_TEXT or self.kind is StepKind.TEXT_TO_SPEECH:
            block = self.speech_to_text or self.text_to_speech
            if block is not None and block.audio_seconds is None:
                raise ValueError(f"kind '{self.kind}' needs '{wanted}.audioSeconds'")
        if self.kind is StepKind.EMBEDDING and self.embedding and self.embedding.tokens is None:
            raise ValueError("kind 'embedding' needs 'embedding.tokens'")
        return self


def _python_name(wire: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in wire)


class Loop(ApiModel):
    """A bounded cycle. ``steps[0]`` is the loop's head: edges into it from inside the loop are
    the back edges; the rest of the loop must be acyclic."""

    name: Name | None = None
    steps: list[Name] = Field(min_length=1, max_length=64)
    expected_iterations: float = Field(ge=1, le=1000)
    max_iterations: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _bounds(self) -> Loop:
        if self.max_iterations < self.expected_iterations:
            raise ValueError("maxIterations must be at least expectedIterations")
        return self


class SLA(ApiModel):
    latency_seconds: PositiveFloat  # end to end, over the graph's critical path
    percentile: float = Field(default=95.0, gt=0, le=100)
    ttft_seconds: PositiveFloat | None = None  # default for every LLM step
    tbt_seconds: PositiveFloat | None = None  # default for every LLM step
    target_requests_per_second: PositiveFloat | None = None


class Planning(ApiModel):
    max_utilisation: Fraction = 0.7  # replicas are sized so no step runs hotter than this


class GraphRuntime(ApiModel):
    """How the graph runs: the gateway's limits, and emulation for clusters without the models."""

    # Every reference worker emulates its step's time from the cost model of its pool, instead
    # of running the real model, index, call or CPU work (LLM, speech steps: always emulated
    # unless the step names a server).
    emulate: bool = False
    request_timeout_seconds: PositiveFloat | None = None  # absent: twice sla.latencySeconds
    max_in_flight: int = Field(default=512, ge=1, le=100_000)  # the gateway answers 503 past it
    gateway_replicas: int | None = Field(default=None, ge=1, le=64)  # absent: from the rate
    # A ClusterIP Service per step (per phase for LLM steps), to call a step directly. Off by
    # default: the gateway routes to the step pods itself, and each Service costs a cluster IP,
    # proxy rules on every node and EndpointSlice updates on every pod change.
    step_services: bool = False


class ReplanSpec(ApiModel):
    """Replanning from measured latency and load (Prometheus)."""

    # auto: apply what measurements call for (scale, move); advisory: write the recommended
    # plan and its saving to status and change nothing (for GitOps); off: plan from the spec only.
    mode: Literal["auto", "advisory", "off"] = "auto"


class AgentGraphSpec(ApiModel):
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    loops: list[Loop] = Field(default_factory=list, max_length=64)
    sla: SLA
    planning: Planning = Field(default_factory=Planning)
    runtime: GraphRuntime = Field(default_factory=GraphRuntime)
    replan: ReplanSpec = Field(default_factory=ReplanSpec)
    # Admission order when pools are short: higher first, then the older graph.
    priority: int = Field(default=0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _reserved_names(self) -> AgentGraphSpec:
        for i, step in enumerate(self.steps):
            if step.name == GATEWAY:
                raise ValueError(f"steps[{i}].name: '{GATEWAY}' is reserved for the graph's "
                                 "gateway; rename the step")
        return self


# The graph's Services are named after it ("<graph>-gateway"): a DNS-1035 label, which starts
# with a letter; at most 40 characters, as steps are, so "<graph>-<step>-<phase>" stays short.
GRAPH_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
GRAPH_NAME_MESSAGE = ("must be a DNS-1035 label of at most 40 characters (lower case letters, "
                      "digits and '-', starting with a letter): the graph's Services are "
                      "named after it")


class AgentGraph(ApiModel):
    api_version: Literal["agentgraph.dev/v1alpha1"] = "agentgraph.dev/v1alpha1"
    kind: Literal["AgentGraph"] = "AgentGraph"
    metadata: ObjectMeta
    spec: AgentGraphSpec
    # Written by the operator; accepted on input so a round-tripped object validates.
    status: dict[str, object] | None = None

    @field_validator("metadata")
    @classmethod
    def _service_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        if not re.match(GRAPH_NAME, metadata.name):
            raise ValueError(f"name '{metadata.name}' {GRAPH_NAME_MESSAGE}")
        return metadata


AgentWorkload.model_rebuild()
Step.model_rebuild()
