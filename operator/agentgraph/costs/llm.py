"""Roofline model of LLM prefill and decode, with tensor parallelism inside one chassis."""

from __future__ import annotations

import math

from agentgraph.api.graph import LLMWorkload, ModelShape, Step
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

ACTIVATION_BYTES = 2  # activations stay in 16-bit whatever the weights are


def weight_bytes(model: ModelShape) -> float:
    return model.parameters_billions * 1e9 * model.dtype_bytes


def kv_bytes_per_token(model: ModelShape) -> float:
    """2 (K and V) * layers * d_model * kv_heads/heads * bytes per element."""
    return 2 * model.layers * model.hidden_size * (model.kv_heads / model.heads) * model.dtype_bytes


def kv_cache_bytes(model: ModelShape, tokens: float, batch: int) -> float:
    """DESIGN.md: 2 * layers * d_model * (kv_heads/heads) * input_len * batch * bytes."""
    return kv_bytes_per_token(model) * tokens * batch


def peak_flops(model: ModelShape, pool: Pool) -> float:
    """FP8 tensor cores when the weights are FP8 and the device has them; FP16 otherwise."""
    if model.dtype_bytes <= 1 and pool.fp8_flops is not None:
        return pool.fp8_flops
    return pool.fp16_flops


def all_reduce_seconds(model: ModelShape, pool: Pool, tp: int, tokens: float) -> float:
    """Two all-reduces of the activations per layer (Megatron-style tensor parallelism)."""
    if tp == 1:
        return 0.0
    size = tokens * model.hidden_size * ACTIVATION_BYTES
    bandwidth_term = 2 * (tp - 1) / tp * size / (pool.scale_up_bandwidth * pool.network_efficiency)
    # Small messages (decode) are latency-bound; NCCL-style collectives then take about
    # log2(tp) hops rather than the ring's 2(tp-1) steps.
    latency_term = math.log2(tp) * pool.scale_up_latency
    return 2 * model.layers * (bandwidth_term + latency_term)


class RooflineLLM:
    """Latency = max(FLOPs / compute, bytes / bandwidth) + all-reduce, per the seed paper."""

    name = "roofline-llm"

    def phases(self, step: Step) -> tuple[Phase, ...]:
        return ("prefill", "decode")

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        work = _workload(step)
        model = work.model
        tps = [1] if pool.is_cpu else [
            tp for tp in settings.tensor_parallel
            if tp <= pool.max_tensor_parallel and model.heads % tp == 0
        ]
        batches = settings.prefill_batches if phase == "prefill" else settings.decode_batches
        result = EstimateResult()
        usable = pool.memory_bytes * settings.memory_headroom
        context = work.input_tokens + (work.output_tokens if phase == "decode" else 0)
        for tp in tps:
            for batch in batches:
                resident = (weight_bytes(model) + kv_cache_bytes(model, context, batch)) / tp
                if resident > usable:
                    continue
                est = (
                    self._prefill(work, pool, tp, batch)
                    if phase == "prefill"
                    else self._decode(work, pool, tp, batch)
                )
                result.options.append(
                    Estimate(
                        pool=pool.name,
                        phase=phase,
                        tensor_parallel=tp,
                        batch=batch,
                        latency=est[0],
                        units=tp * pool.units_per_device,
                        cost_per_request=price_per_request(
                            tp * pool.units_per_device, pool, batch / est[0]
                        ),
                        bound=est[2],
                        throughput=batch / est[0],
                        tbt=est[1],
                        memory_per_device=resident,
                    )
                )
        if not result.options:
            most = max(tps) * usable
            need = weight_bytes(model) + kv_cache_bytes(model, context, 1)
            result.rejected.append(
                f"{pool.name}: {phase} needs {need / GB:.1f} GB for weights and KV cache, "
                f"at most {most / GB:.1f} GB fit (TP {max(tps)}, "
                f"{settings.memory_headroom:.0%} of {pool.memory_bytes / GB:.0f} GB)"
            )
        return result

    def _prefill(
        self, work: LLMWorkload, pool: Pool, tp: int, batch: int
    ) -> tuple[float, None, str]:
        m, n = work.model, work.input_tokens
        flops = batch * (2 * m.parameters_billions * 1e9 * n + 2 * m.layers * n * n * m.hidden_size)
        moved = weight_bytes(m) + kv_cache_bytes(m, n, batch)
        t_compute = flops / (tp * peak_flops(m, pool) * pool.compute_efficiency)
        t_memory = moved / (tp * pool.bandwidth * pool.memory_efficiency)
        t_comm = all_reduce_seconds(m, pool, tp, batch * n)
        return max(t_compute, t_memory) + t_comm, None, _bound(t_compute, t_memory, t_comm)

    def _decode(
        self, work: LLMWorkload, pool: Pool, tp: int, batch: int
    ) -> tuple[float, float, str]:
        m = work.model
        context = work.input_tokens + work.output_tokens / 2  # mean context over the decode
        flops = batch * (2 * m.parameters_billions * 1e9 + 4 * m.layers * context * m.hidden_size)
        moved = weight_bytes(m) + kv_cache_bytes(m, context, batch)
        t_compute = flops / (tp * peak_flops(m, pool) * pool.compute_efficiency)
        t_memory = moved / (tp * pool.bandwidth * pool.memory_efficiency)
        t_comm = all_reduce_seconds(m, pool, tp, batch)
        tbt = max(t_compute, t_memory) + t_comm
        return work.output_tokens * tbt, tbt, _bound(t_compute, t_memory, t_comm)

    def kv_transfer(
        self, step: Step, src: Pool, dst: Pool, settings: CostSettings
    ) -> TransferEstimate | None:
        """Moving one request's prompt KV cache from the prefill pool to the decode pool.

        The link is the slower side's NIC; each side's replica may use several devices, but the
        planner does not know TP here, so one NIC per side is assumed (conservative).
        """
        work = _workload(step)
        size = kv_cache_bytes(work.model, work.input_tokens, 1)
        link = min(src.scale_out, dst.scale_out) * min(
            src.network_efficiency, dst.network_efficiency
        )
        return TransferEstimate(
            latency=size / link,
            bytes=size,
            cost_per_request=size / GB * settings.kv_transfer_usd_per_gb,
        )


def _bound(t_compute: float, t_memory: float, t_comm: float) -> str:
    if t_comm > max(t_compute, t_memory):
        return "network"
    return "compute" if t_compute >= t_memory else "memory"


def _workload(step: Step) -> LLMWorkload:
    if step.llm is None:
        raise ValueError(f"step {step.name}: the LLM cost model needs an 'llm' block")
    return step.llm
