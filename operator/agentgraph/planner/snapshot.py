"""An immutable view of the pools the planner may use: plan over it, then act."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from agentgraph.api.hardware import CostBasis, HardwareProfile
from agentgraph.costs.base import CostSettings, Pool
from agentgraph.planner.errors import Issue, PlanningError

PODS = "/pods"  # a pool's pod slots are capacity key "<pool>/pods"; its units are "<pool>"


Slot = tuple[str, str, str]  # (step, phase "run"|"prefill"|"decode", pool)


@dataclass(frozen=True)
class ClusterSnapshot:
    pools: tuple[Pool, ...]  # sorted by name
    # Measured / predicted latency per slot (the replanner's corrections): the cost model's
    # estimate there is multiplied by it (latency, time between tokens, cost per request) and
    # its throughput divided. Absent: 1.
    corrections: Mapping[Slot, float] = field(default_factory=dict)

    def correction(self, step: str, phase: str, pool: str) -> float:
        return self.corrections.get((step, phase, pool), 1.0)

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def without_capacity(self) -> ClusterSnapshot:
        """The same pools, unbounded: to tell 'too small' apart from 'impossible'."""
        return replace(self, pools=tuple(replace(p, capacity_units=None, capacity_pods=None,
                                                 capacity_block=None) for p in self.pools))

    def capacities(self) -> dict[str, float]:
        """Every limited capacity, by key: '<pool>' in units (devices, or cores for CPU pools),
        '<pool>/pods' in pods (the nodes' pod limit: many small steps can run out of it first)."""
        out: dict[str, float] = {}
        for p in self.pools:
            if p.capacity_units is not None:
                out[p.name] = p.capacity_units
            if p.capacity_pods is not None:
                out[p.name + PODS] = p.capacity_pods
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    @staticmethod
    def from_profiles(
        profiles: Iterable[HardwareProfile],
        settings: CostSettings,
        capacity_units: Mapping[str, float] | None = None,
        capacity_pods: Mapping[str, float] | None = None,
        capacity_block: Mapping[str, float] | None = None,
        corrections: Mapping[Slot, float] | None = None,
    ) -> ClusterSnapshot:
        """Pools from profiles. Capacity (devices, or cores for CPU pools) comes from
        ``capacity_units`` when given (the operator counts live Nodes), else from the profile's
        ``pool.nodes``; neither means unbounded. ``capacity_pods`` (the operator counts the
        nodes' free pod slots) limits the replicas a pool can take; absent, they are unbounded.
        ``capacity_block`` is the most units free on any one node of a pool: a replica (its
        devices, or its cores) must fit on one node."""
        _check_prices(profiles, settings)
        pools = []
        for profile in sorted(profiles, key=lambda p: p.name):
            pool = Pool.from_profile(profile, settings)
            capacity: float | None = None
            if capacity_units is not None:
                capacity = capacity_units.get(profile.name, 0.0)
            elif profile.spec.pool.nodes is not None:
                devices = profile.spec.pool.nodes * profile.spec.pool.devices_per_node
                capacity = devices * pool.units_per_device
            pods = None if capacity_pods is None else capacity_pods.get(profile.name, 0.0)
            block = None if capacity_block is None else capacity_block.get(profile.name, 0.0)
            pools.append(replace(pool, capacity_units=capacity, capacity_pods=pods,
                                 capacity_block=block))
        return ClusterSnapshot(tuple(pools), dict(corrections or {}))


def _check_prices(profiles: Iterable[HardwareProfile], settings: CostSettings) -> None:
    """An overridden cost basis needs its figure on every profile (a profile's own basis is
    checked when it is read)."""
    basis = settings.cost_basis
    if basis is None:
        return
    field = "hourlyUSD" if basis is CostBasis.HOURLY else "purchaseUSD"
    missing = [p.name for p in profiles
               if (p.spec.cost.hourly_usd if basis is CostBasis.HOURLY
                   else p.spec.cost.purchase_usd) is None]
    if missing:
        other = "owned" if basis is CostBasis.HOURLY else "hourly"
        raise PlanningError([Issue(f"HardwareProfile/{name}: spec.cost.{field}",
                                   f"missing: the {basis.value} cost basis prices every pool "
                                   f"by it; add it, leave these pools out, or plan on the "
                                   f"{other} basis") for name in missing])
