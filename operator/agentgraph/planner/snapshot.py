"""An immutable view of the pools the planner may use: plan over it, then act."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agentgraph.api.hardware import HardwareProfile
from agentgraph.costs.base import CostSettings, Pool


@dataclass(frozen=True)
class ClusterSnapshot:
    pools: tuple[Pool, ...]  # sorted by name

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def without_capacity(self) -> ClusterSnapshot:
        """The same pools, unbounded: to tell 'too small' apart from 'impossible'."""
        return ClusterSnapshot(tuple(replace(p, capacity_units=None) for p in self.pools))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    @staticmethod
    def from_profiles(
        profiles: Iterable[HardwareProfile],
        settings: CostSettings,
        capacity_units: Mapping[str, float] | None = None,
    ) -> ClusterSnapshot:
        """Pools from profiles. Capacity (devices, or cores for CPU pools) comes from
        ``capacity_units`` when given (the operator counts live Nodes), else from the profile's
        ``pool.nodes``; neither means unbounded."""
        pools = []
        for profile in sorted(profiles, key=lambda p: p.name):
            pool = Pool.from_profile(profile, settings)
            capacity: float | None = None
            if capacity_units is not None:
                capacity = capacity_units.get(profile.name, 0.0)
            elif profile.spec.pool.nodes is not None:
                devices = profile.spec.pool.nodes * profile.spec.pool.devices_per_node
                capacity = devices * pool.units_per_device
            pools.append(replace(pool, capacity_units=capacity))
        return ClusterSnapshot(tuple(pools))
