"""The types every cost model speaks: pools, settings, estimates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agentgraph.api.graph import Step
from agentgraph.api.hardware import CostBasis, DeviceType, HardwareProfile

Phase = Literal["run", "prefill", "decode"]
GB = 1e9


@dataclass(frozen=True)
class CostSettings:
    """Defaults a profile's measured figures override. Documented in the README."""

    compute_efficiency: float = 0.6  # achieved share of dense peak FLOP/s (MFU)
    memory_efficiency: float = 0.8  # achieved share of peak memory bandwidth (MBU)
    network_efficiency: float = 0.8  # achieved share of link bandwidth
    memory_headroom: float = 0.9  # share of device memory weights + KV cache may fill
    tensor_parallel: tuple[int, ...] = (1, 2, 4, 8)
    prefill_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    small_model_batches: tuple[int, ...] = (1, 4, 16, 64)
    cpu_cores: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    kv_transfer_usd_per_gb: float = 0.0  # network charge for KV moved between pools
    stt_tokens_per_audio_second: float = 50.0  # Whisper: 1500 encoder frames per 30 s
    tts_tokens_per_audio_second: float = 75.0  # neural codec frame rate
    cost_basis: CostBasis | None = None  # None: each profile's own basis


@dataclass(frozen=True)
class Pool:
    """One node pool, in SI units, as the cost models see it."""

    name: str
    device: str
    is_cpu: bool
    memory_bytes: float  # per device (per node for CPU pools)
    bandwidth: float  # bytes/s per device (node)
    fp16_flops: float
    fp8_flops: float | None
    max_tensor_parallel: int
    scale_up_bandwidth: float  # bytes/s per device, one direction
    scale_up_latency: float  # seconds per collective step
    scale_out: float  # bytes/s per device
    cores: float  # CPU: per node; accelerator: host cores per device
    device_hour_usd: float  # per device (node)
    compute_efficiency: float
    memory_efficiency: float
    network_efficiency: float
    capacity_units: float | None = None  # None: unbounded
    capacity_pods: float | None = None  # pods its nodes can still take; None: unbounded
    capacity_block: float | None = None  # most units free on any one node: a replica's limit

    @property
    def units_per_device(self) -> float:
        """Capacity is counted in devices for accelerators and in cores for CPU pools."""
        return self.cores if self.is_cpu else 1.0

    @property
    def unit_hour_usd(self) -> float:
        return self.device_hour_usd / self.units_per_device

    @staticmethod
    def from_profile(
        profile: HardwareProfile,
        settings: CostSettings,
        capacity_units: float | None = None,
    ) -> Pool:
        s = profile.spec
        cpu = s.device_type is DeviceType.CPU
        eff = s.efficiency
        return Pool(
            name=profile.name,
            device=s.device,
            is_cpu=cpu,
            memory_bytes=s.memory_gb * GB,
            bandwidth=s.memory_bandwidth_gbps * GB,
            fp16_flops=s.fp16_tflops * 1e12,
            fp8_flops=None if s.fp8_tflops is None else s.fp8_tflops * 1e12,
            max_tensor_parallel=1 if s.scale_up is None else s.scale_up.max_devices,
            scale_up_bandwidth=0.0 if s.scale_up is None else s.scale_up.bandwidth_gbps * GB,
            scale_up_latency=0.0 if s.scale_up is None else s.scale_up.latency_us * 1e-6,
            scale_out=s.scale_out_gbit * GB / 8,
            cores=s.cores,
            device_hour_usd=s.hourly_cost(settings.cost_basis),
            compute_efficiency=eff.compute or settings.compute_efficiency,
            memory_efficiency=eff.memory or settings.memory_efficiency,
            network_efficiency=eff.network or settings.network_efficiency,
            capacity_units=capacity_units,
        )


@dataclass(frozen=True)
class Estimate:
    """One way to run one phase of one step on one pool."""

    pool: str
    phase: Phase
    tensor_parallel: int
    batch: int
    latency: float  # seconds one request spends in this phase
    units: float  # devices (or cores) one replica holds
    cost_per_request: float  # $ at full utilisation
    bound: str  # compute | memory | network | io | table
    throughput: float | None  # requests/s one replica sustains; None: usage-priced (table)
    tbt: float | None = None  # decode: seconds between tokens
    memory_per_device: float = 0.0  # bytes


@dataclass(frozen=True)
class TransferEstimate:
    latency: float
    bytes: float
    cost_per_request: float


@dataclass(frozen=True)
class EstimateResult:
    options: list[Estimate] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why a pool cannot run the phase


class CostModel(Protocol):
    name: str

    def phases(self, step: Step) -> tuple[Phase, ...]: ...

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult: ...

    def kv_transfer(
        self, step: Step, src: Pool, dst: Pool, settings: CostSettings
    ) -> TransferEstimate | None: ...


def price_per_request(units: float, pool: Pool, throughput: float) -> float:
    """$ one request costs when a replica of ``units`` runs flat out at ``throughput``."""
    return units * pool.unit_hour_usd / 3600.0 / throughput


def ceil_replicas(rate: float, throughput: float, max_utilisation: float) -> int:
    # A small tolerance keeps 10.000000001 from becoming 11 replicas.
    return max(1, math.ceil(rate / (throughput * max_utilisation) - 1e-9))
