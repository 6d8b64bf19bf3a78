"""Real tool calls and CPU work, and the choice of backend for a worker."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from agentgraph.api.graph import Step, StepKind
from agentgraph.api.hardware import DeviceType
from agentgraph.api.runtime import WorkerConfig
from agentgraph.runtime import http
from agentgraph.runtime.emulator import EmulatedStep, loop_verdict
from agentgraph.runtime.worker import Backend, Call, Result, StepFailure

BURN_CHUNK = os.urandom(64 * 1024)  # hashing releases the GIL on buffers this size


class ToolStep:
    """POSTs the step's inputs (or GETs) to ``tool.url``; the JSON answer is the output."""

    mode = "real"

    def __init__(self, config: WorkerConfig, client: http.Client | None = None) -> None:
        assert config.spec.tool is not None and config.spec.tool.url is not None
        self.config = config
        self.url = str(config.spec.tool.url)
        self.method = config.spec.tool.method
        self.slots = config.spec.tool.concurrency
        self.client = client or http.Client()

    async def start(self) -> None:
        return None

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    async def run(self, call: Call) -> Result:
        body = b"" if self.method == "GET" else orjson.dumps(
            {"inputs": call.inputs, "request": call.request, "iteration": call.iteration})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            got = await self.client.request(self.method, self.url, body, headers)
        except http.HTTPError as e:
            raise StepFailure(502, f"tool call {self.method} {self.url} failed: {e}") from e
        if got.status >= 400:
            text = got.body[:200].decode(errors="replace")
            raise StepFailure(502, f"tool call {self.method} {self.url} answered {got.status}: "
                              f"{text}")
        try:
            output: Any = got.json()
        except orjson.JSONDecodeError:
            output = {"text": got.body.decode(errors="replace")}
        return Result(output=output, proceed=loop_verdict(self.config, call))


def _cores(config: WorkerConfig) -> int:
    """Cores a replica holds: units are cores on CPU pools, a device's share on accelerators."""
    profile = config.profile.spec
    per_unit = 1.0 if profile.device_type is DeviceType.CPU else profile.cores
    return max(1, round(config.units_per_replica * per_unit))


def _burn(seconds: float) -> int:
    """Spend ``seconds`` of this thread's CPU time hashing; returns the rounds done."""
    end = time.thread_time() + seconds
    rounds = 0
    while time.thread_time() < end:
        hashlib.sha256(BURN_CHUNK).digest()
        rounds += 1
    return rounds


class ComputeStep:
    """Really spends the step's ``coreSeconds`` of CPU, split over the replica's cores."""

    mode = "real"

    def __init__(self, config: WorkerConfig) -> None:
        assert config.spec.compute is not None
        self.config = config
        self.core_seconds = config.spec.compute.core_seconds
        self.cores = _cores(config)
        self.slots = 1

    async def start(self) -> None:
        return None

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    async def run(self, call: Call) -> Result:
        share = self.core_seconds / self.cores
        rounds = await asyncio.gather(*(asyncio.to_thread(_burn, share)
                                        for _ in range(self.cores)))
        return Result(output={"coreSeconds": self.core_seconds, "cores": self.cores,
                              "rounds": sum(rounds)}, proceed=loop_verdict(self.config, call))


def emulated(spec: Step, emulate: bool) -> bool:
    """Whether a reference worker emulates this step: always for LLMs without a server and
    for speech (no such model runs here), tools without a URL, a step given only as a cost
    table (there is no workload to run, only the times measured), and anything asked to."""
    if spec.kind is StepKind.LLM:
        return spec.llm is None or spec.llm.server is None
    if spec.kind in (StepKind.SPEECH_TO_TEXT, StepKind.TEXT_TO_SPEECH):
        return True
    if spec.kind is StepKind.TOOL and (spec.tool is None or spec.tool.url is None):
        return True
    workload = {StepKind.COMPUTE: spec.compute, StepKind.EMBEDDING: spec.embedding,
                StepKind.VECTOR_SEARCH: spec.vector_search}
    if spec.kind in workload and workload[spec.kind] is None:
        return True
    return emulate


def backend(config: WorkerConfig, port: int) -> Backend:
    """The real worker where this machine can run it, the emulator otherwise (or when asked)."""
    spec = config.spec
    kind = config.kind
    if kind is StepKind.LLM:
        from agentgraph.runtime import llm

        if emulated(spec, config.emulate):
            return llm.EmulatedLLM(config, port)
        return llm.OpenAIAdapter(config)
    if emulated(spec, config.emulate):
        return EmulatedStep(config)
    if kind is StepKind.TOOL:
        return ToolStep(config)
    if kind is StepKind.COMPUTE:
        return ComputeStep(config)
    if kind in (StepKind.EMBEDDING, StepKind.VECTOR_SEARCH):
        from agentgraph.runtime import embedding

        if kind is StepKind.EMBEDDING:
            return embedding.EmbeddingStep(config)
        return embedding.VectorSearchStep(config)
    return EmulatedStep(config)
