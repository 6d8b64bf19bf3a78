"""Cost models of the non-LLM steps: small models, vector search, tool calls, plain CPU work."""

from __future__ import annotations

from collections.abc import Iterable

from agentgraph.api.graph import SmallModelWorkload, Step, StepKind
from agentgraph.costs.base import (
    GB,
    CostSettings,
    Estimate,
    EstimateResult,
    Phase,
    Pool,
    TransferEstimate,
    price_per_request,
)


def _estimate(
    pool: Pool, units: float, batch: int, latency: float, bound: str, memory: float = 0.0
) -> Estimate:
    throughput = batch / latency
    return Estimate(
        pool=pool.name,
        phase="run",
        tensor_parallel=1,
        batch=batch,
        latency=latency,
        units=units,
        cost_per_request=price_per_request(units, pool, throughput),
        bound=bound,
        throughput=throughput,
        memory_per_device=memory,
    )


def _roofline(
    pool: Pool, share: float, flops: float, moved: float, static: float
) -> tuple[float, str]:
    """Seconds for ``flops`` and ``moved`` bytes on ``share`` of one device (node)."""
    t_compute = flops / (share * pool.fp16_flops * pool.compute_efficiency)
    t_memory = moved / (share * pool.bandwidth * pool.memory_efficiency)
    return max(t_compute, t_memory) + static, "compute" if t_compute >= t_memory else "memory"


def _cpu_core_options(pool: Pool, settings: CostSettings, most: float) -> Iterable[int]:
    return [k for k in settings.cpu_cores if k <= min(pool.cores, most)]


class _SingleRun:
    name = "base"

    def phases(self, step: Step) -> tuple[Phase, ...]:
        return ("run",)

    def kv_transfer(
        self, step: Step, src: Pool, dst: Pool, settings: CostSettings
    ) -> TransferEstimate | None:
        return None


class SmallModel(_SingleRun):
    """Embedding, speech-to-text, text-to-speech: one forward pass over the request's tokens.

    On an accelerator a replica holds one device and batches requests; on a CPU pool it holds a
    few cores and runs one request at a time.
    """

    name = "small-model"

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        work, tokens = _small_model(step, settings)
        weights = work.parameters_billions * 1e9 * work.dtype_bytes
        flops_one = 2 * work.parameters_billions * 1e9 * tokens
        result = EstimateResult()
        fits = weights <= pool.memory_bytes * settings.memory_headroom
        if not fits:
            result.rejected.append(
                f"{pool.name}: weights need {weights / GB:.1f} GB, "
                f"{pool.memory_bytes / GB:.0f} GB per device"
            )
            return result
        if pool.is_cpu:
            for k in _cpu_core_options(pool, settings, pool.cores):
                lat, bound = _roofline(
                    pool, k / pool.cores, flops_one, weights, work.static_latency_seconds
                )
                result.options.append(_estimate(pool, k, 1, lat, bound, weights))
        else:
            for batch in settings.small_model_batches:
                lat, bound = _roofline(
                    pool, 1.0, batch * flops_one, weights, work.static_latency_seconds
                )
                result.options.append(_estimate(pool, 1.0, batch, lat, bound, weights))
        return result


def _small_model(step: Step, settings: CostSettings) -> tuple[SmallModelWorkload, float]:
    if step.kind is StepKind.EMBEDDING and step.embedding and step.embedding.tokens:
        return step.embedding, float(step.embedding.tokens)
    if step.kind is StepKind.SPEECH_TO_TEXT and step.speech_to_text:
        audio = step.speech_to_text.audio_seconds or 0.0
        return step.speech_to_text, audio * settings.stt_tokens_per_audio_second
    if step.kind is StepKind.TEXT_TO_SPEECH and step.text_to_speech:
        audio = step.text_to_speech.audio_seconds or 0.0
        return step.text_to_speech, audio * settings.tts_tokens_per_audio_second
    raise ValueError(f"step {step.name}: kind {step.kind} has no small-model workload")


class VectorSearch(_SingleRun):
    """An ANN query scans a fraction of the index: memory-bound on CPU, optional on GPU."""

    name = "vector-search"

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        work = step.vector_search
        if work is None:
            raise ValueError(f"step {step.name}: needs a 'vectorSearch' block")
        result = EstimateResult()
        index = work.vectors * work.dimensions * work.bytes_per_element
        if not pool.is_cpu and not work.accelerated:
            result.rejected.append(f"{pool.name}: vectorSearch.accelerated is false")
            return result
        if index > pool.memory_bytes * settings.memory_headroom:
            result.rejected.append(
                f"{pool.name}: the index needs {index / GB:.1f} GB, "
                f"{pool.memory_bytes / GB:.0f} GB available"
            )
            return result
        scanned = work.vectors * work.scanned_fraction * work.queries_per_request
        flops = 2 * scanned * work.dimensions
        moved = scanned * work.dimensions * work.bytes_per_element
        if pool.is_cpu:
            for k in _cpu_core_options(pool, settings, pool.cores):
                lat, bound = _roofline(
                    pool, k / pool.cores, flops, moved, work.static_latency_seconds
                )
                result.options.append(_estimate(pool, k, 1, lat, bound, index))
        else:
            lat, bound = _roofline(pool, 1.0, flops, moved, work.static_latency_seconds)
            result.options.append(_estimate(pool, 1.0, 1, lat, bound, index))
        return result


class Tool(_SingleRun):
    """I/O-bound: the latency is the remote call's; a replica serves many calls at once.

    On an accelerator pool it runs on the host CPU, and pays the host cores' share of a device.
    """

    name = "tool"

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        work = step.tool
        if work is None:
            raise ValueError(f"step {step.name}: needs a 'tool' block")
        units = work.cpu_cores / (1.0 if pool.is_cpu else pool.cores)
        option = _estimate(pool, units, work.concurrency, work.latency_seconds, "io")
        return EstimateResult(options=[option])


class Compute(_SingleRun):
    """Plain CPU work: core-seconds spread over up to ``maxCores`` cores."""

    name = "compute"

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        work = step.compute
        if work is None:
            raise ValueError(f"step {step.name}: needs a 'compute' block")
        result = EstimateResult()
        per_unit = 1.0 if pool.is_cpu else pool.cores
        for k in _cpu_core_options(pool, settings, work.max_cores):
            result.options.append(
                _estimate(pool, k / per_unit, 1, work.core_seconds / k, "compute")
            )
        if not result.options:
            result.rejected.append(f"{pool.name}: fewer than 1 core per device")
        return result
