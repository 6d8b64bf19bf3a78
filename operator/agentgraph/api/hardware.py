"""HardwareProfile: what one device (or one CPU node type) can do, what it costs, where it lives."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from agentgraph.api.common import ApiModel, Fraction, NonNegativeFloat, ObjectMeta, PositiveFloat

HOURS_PER_YEAR = 8760.0


class DeviceType(StrEnum):
    ACCELERATOR = "accelerator"
    CPU = "cpu"


class CostBasis(StrEnum):
    HOURLY = "hourly"  # a rented price per device-hour (per node-hour for CPU profiles)
    OWNED = "owned"  # purchase price financed over years at an interest rate, plus power at TDP


class Cost(ApiModel):
    """How an hour of one device (accelerators) or one node (CPU profiles) is priced.

    Every profile prices the same way: ``hourly`` uses ``hourlyUSD`` as given; ``owned`` pays the
    purchase price back as an annuity over ``amortisationYears`` at ``interestRate`` and adds power
    at full TDP at ``powerUSDPerKWh``. Both sets of figures may be present; ``basis`` picks one and
    callers may override it (the paper report prints both).
    """

    basis: CostBasis
    hourly_usd: PositiveFloat | None = Field(default=None, alias="hourlyUSD")
    purchase_usd: PositiveFloat | None = Field(default=None, alias="purchaseUSD")
    amortisation_years: PositiveFloat = 4.0
    interest_rate: float = Field(default=0.08, ge=0, le=1)
    power_usd_per_kwh: NonNegativeFloat = Field(default=0.40, alias="powerUSDPerKWh")

    @model_validator(mode="after")
    def _basis_has_figures(self) -> Cost:
        if self.basis is CostBasis.HOURLY and self.hourly_usd is None:
            raise ValueError("basis 'hourly' needs hourlyUSD")
        if self.basis is CostBasis.OWNED and self.purchase_usd is None:
            raise ValueError("basis 'owned' needs purchaseUSD")
        return self


class ScaleUp(ApiModel):
    """The chassis-local link (NVLink, Infinity Fabric, Gaudi RoCE) tensor parallelism uses."""

    bandwidth_gbps: PositiveFloat = Field(alias="bandwidthGBps")  # GB/s per device, one direction
    max_devices: int = Field(ge=1, le=72)
    latency_us: PositiveFloat = Field(default=8.0, alias="latencyMicroseconds")


class Taint(ApiModel):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class PoolSpec(ApiModel):
    """Where the devices live: the node labels and taints of the pool, and its size."""

    node_selector: dict[str, str] = Field(min_length=1)
    taints: list[Taint] = Field(default_factory=list, max_length=16)
    devices_per_node: int = Field(default=1, ge=1, le=64)
    # Nodes the planner may use when it plans without a cluster (CLI). In the cluster the
    # operator counts live Nodes instead. None means "as many as the plan needs".
    nodes: int | None = Field(default=None, ge=0, le=100_000)


class Efficiency(ApiModel):
    """Measured fractions of peak; absent ones fall back to the planner's defaults."""

    compute: Fraction | None = None
    memory: Fraction | None = None
    network: Fraction | None = None


class HardwareProfileSpec(ApiModel):
    vendor: str = Field(min_length=1)
    device: str = Field(min_length=1)
    device_type: DeviceType
    memory_gb: PositiveFloat = Field(alias="memoryGB")  # per device; per node for CPU profiles
    memory_bandwidth_gbps: PositiveFloat = Field(alias="memoryBandwidthGBps")  # GB/s
    fp16_tflops: PositiveFloat = Field(alias="fp16TFLOPS")  # dense FP16/BF16
    fp8_tflops: PositiveFloat | None = Field(default=None, alias="fp8TFLOPS")  # dense; None: no FP8
    scale_up: ScaleUp | None = None  # None: no tensor parallelism across devices
    scale_out_gbit: PositiveFloat = Field(alias="scaleOutGbps")  # Gbit/s per device (NIC)
    tdp_watts: PositiveFloat
    # CPU profiles: cores per node. Accelerators: host cores that come with each device.
    cores: PositiveFloat
    cost: Cost
    resource_name: Literal["nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi", "none"]
    pool: PoolSpec
    efficiency: Efficiency = Field(default_factory=Efficiency)
    # field path -> where the number comes from ("paper: ...", "vendor: ...", "derived: ...")
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfileSpec:
        cpu = self.device_type is DeviceType.CPU
        if cpu and self.resource_name != "none":
            raise ValueError("a cpu profile has resourceName 'none'")
        if not cpu and self.resource_name == "none":
            raise ValueError("an accelerator profile needs an extended resourceName")
        if cpu and self.scale_up is not None:
            raise ValueError("a cpu profile has no scaleUp (no tensor parallelism across nodes)")
        if self.cost.basis is CostBasis.OWNED and self.tdp_watts <= 0:
            raise ValueError("basis 'owned' needs tdpWatts")
        return self

    def hourly_cost(self, basis: CostBasis | None = None) -> float:
        """$ per device-hour (accelerators) or per node-hour (CPU profiles)."""
        basis = basis or self.cost.basis
        if basis is CostBasis.HOURLY:
            if self.cost.hourly_usd is None:
                raise ValueError(f"{self.device}: no hourlyUSD for the hourly cost basis")
            return self.cost.hourly_usd
        if self.cost.purchase_usd is None:
            raise ValueError(f"{self.device}: no purchaseUSD for the owned cost basis")
        rate, years = self.cost.interest_rate, self.cost.amortisation_years
        yearly = (
            self.cost.purchase_usd / years
            if rate == 0
            else self.cost.purchase_usd * rate / (1 - (1 + rate) ** -years)
        )
        power = self.tdp_watts / 1000.0 * self.cost.power_usd_per_kwh
        return yearly / HOURS_PER_YEAR + power


class HardwareProfile(ApiModel):
    api_version: Literal["agentgraph.dev/v1alpha1"] = "agentgraph.dev/v1alpha1"
    kind: Literal["HardwareProfile"] = "HardwareProfile"
    metadata: ObjectMeta
    spec: HardwareProfileSpec
    # Written by the operator (Valid); accepted on input so a profile read back validates.
    status: dict[str, object] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name
