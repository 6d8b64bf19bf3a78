"""Emulated steps: time taken from the cost model of the pool the step was placed on.

For clusters without the models (no GPU here) and for benchmarks. An emulated worker says so: its
metrics carry ``mode="emulator"``, its log line at start names the emulator, and its outputs
carry ``"emulated": true``. The time is what the planner's own cost model gives for the step on
this pool at the planned tensor parallelism and batch (times ``slowdown``, which tests use to
make a pool slower than its profile says), so measured minus predicted is the cost of the real
moving parts around it: HTTP hops, queueing, scheduling.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

from agentgraph.api.graph import StepKind
from agentgraph.api.runtime import WorkerConfig
from agentgraph.costs import registry
from agentgraph.costs.base import CostSettings, Estimate, Pool
from agentgraph.runtime import http
from agentgraph.runtime.worker import Call, Result, StepFailure

SPIN_S = 0.0015  # event-loop timers fire in whole milliseconds: the last stretch is yielded away


async def wait(seconds: float) -> None:
    """Wait ``seconds`` to within a tenth of a millisecond: a timer for all but the last
    ``SPIN_S``, then yielding to the loop until the time is up. (A bare timer rounds to the
    millisecond, 20 % of a 5 ms step.) The clock is perf_counter: uvloop's loop.time() moves in
    whole milliseconds too, so a wait of a microsecond measured by it would last one."""
    end = time.perf_counter() + seconds
    if seconds > SPIN_S:
        await asyncio.sleep(seconds - SPIN_S)
    while time.perf_counter() < end:
        await asyncio.sleep(0)


def estimate(config: WorkerConfig, settings: CostSettings | None = None) -> Estimate | None:
    """The cost model's estimate for this step phase at its planned TP, batch and units."""
    settings = settings or CostSettings()
    pool = Pool.from_profile(config.profile, settings)
    model = registry.model_for(config.spec)
    options = model.estimate(config.spec, config.phase, pool, settings).options
    for option in options:
        if (option.tensor_parallel == config.tensor_parallel and option.batch == config.batch
                and math.isclose(option.units, config.units_per_replica, rel_tol=1e-6)):
            return option
    return None


def seconds(config: WorkerConfig) -> float:
    """One visit's time: the cost model's, else (settings differ) the planner's prediction."""
    found = estimate(config)
    base = found.latency if found is not None else config.predicted_seconds
    return base * config.slowdown


def iterations(request_id: str, expected: float, maximum: int) -> int:
    """How many times this request runs the loop it is in: a mix of floor and ceil of the
    expected count whose mean is the expected count, fixed per request id (so a loop head
    decides the same way every iteration)."""
    low = math.floor(expected)
    share = expected - low
    draw = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2**64
    return max(1, min(maximum, low + (1 if draw < share else 0)))


def loop_verdict(config: WorkerConfig, call: Call) -> bool | None:
    if config.loop is None:
        return None
    wanted = iterations(call.request_id or str(id(call)), config.loop.expected_iterations,
                        config.loop.max_iterations)
    return call.iteration + 1 < wanted


def _text(inputs: Mapping[str, Any], request: Any) -> str:
    for value in inputs.values():
        if isinstance(value, Mapping) and isinstance(value.get("text"), str):
            return str(value["text"])
    if isinstance(request, Mapping):
        for key in ("transcript", "text"):
            if isinstance(request.get(key), str):
                return str(request[key])
    return ""


class EmulatedStep:
    """Any non-LLM kind: wait the cost model's time, answer a small output of the kind's shape."""

    mode = "emulator"

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.slots = max(1, config.batch)
        self.seconds = seconds(config)

    async def start(self) -> None:
        return None

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    async def run(self, call: Call) -> Result:
        if call.remaining() < self.seconds:
            # It cannot finish in time: fail now instead of holding a slot to no purpose.
            raise StepFailure(504, f"needs {self.seconds:.3g} s, {max(0.0, call.remaining()):.3g}"
                              " s left")
        await wait(self.seconds)
        return Result(output=self.output(call), proceed=loop_verdict(self.config, call))

    def output(self, call: Call) -> dict[str, Any]:
        spec = self.config.spec
        text = _text(call.inputs, call.request)
        out: dict[str, Any] = {"emulated": True}
        if self.config.kind is StepKind.SPEECH_TO_TEXT:
            out["text"] = text or "what is the weather like in Paris tomorrow"
        elif self.config.kind is StepKind.TEXT_TO_SPEECH:
            audio = spec.text_to_speech.audio_seconds if spec.text_to_speech else None
            out.update(text=text, audioSeconds=audio)
        elif self.config.kind is StepKind.EMBEDDING:
            out["dimensions"] = 0
        elif self.config.kind is StepKind.VECTOR_SEARCH:
            out["documents"] = []
        elif self.config.kind is StepKind.TOOL:
            out["text"] = text
        return out
