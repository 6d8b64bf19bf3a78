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
            capacity: float | None
            if capacity_units is not None:
                capacity = capacity_units.get(profile.name, 0.0)
            elif profile.spec.pool.nodes is not None:
                per_node = profile.spec.pool.devices_per_node
                units = profile.spec.cores if profile.spec.device_type == "cpu" else 1.0
                capacity = profile.spec.pool.nodes * per_node * units
            else:
                capacity = None
            pools.append(Pool.from_profile(profile, settings, capacity))
        return ClusterSnapshot(tuple(pools))
