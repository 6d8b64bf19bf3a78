"""Model servers shared by steps naming one model: what each server holds and costs.

Steps of a group (``GraphModel.groups``) that run a phase on the same pool are served by one
server there: one (tensor parallelism, batch), sized on the members' summed load. A member's
option on that pool is its own latency at the server's batch; its load is the share of one
replica its requests take (rate x visits / the replica's throughput for its requests). The
server runs ceil(sum of the loads / max utilisation) replicas, each priced as any replica of
that (pool, TP) is. Two members on one pool with different (TP, batch) break the rule: one
server per pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from agentgraph.costs.base import Phase
from agentgraph.planner.candidates import Option
from agentgraph.planner.graph import GraphModel

ROUNDING = 1e-9  # as ceil_replicas: 10.000000001 replicas' worth is 10 replicas


@dataclass(frozen=True)
class Server:
    group: str  # the model's name and dtype ("llama-8b@2")
    phase: Phase
    pool: str
    tensor_parallel: int
    batch: int
    members: tuple[str, ...]  # steps, in graph order; the first names the server's objects
    loads: tuple[float, ...]  # per member: replicas' worth of its work, flat out
    replicas: int
    units: float  # per replica
    replica_hour: float  # $ per replica-hour

    @property
    def lead(self) -> str:
        return self.members[0]

    @property
    def cost_per_hour(self) -> float:
        return self.replicas * self.replica_hour

    def share(self, step: str) -> float:
        """The part of the server's cost a member's load takes (an even part when none of
        them has load: steps of a loop's rest at one expected iteration)."""
        total = sum(self.loads)
        if total <= 0:
            return self.cost_per_hour / len(self.members)
        return self.cost_per_hour * self.loads[self.members.index(step)] / total


def load(option: Option, rate: float, visits: float) -> float:
    """Replicas' worth of work (at full utilisation) one member puts on the server."""
    assert option.estimate.throughput is not None
    return rate * visits / option.estimate.throughput


def replica_hour(option: Option) -> float:
    assert option.estimate.throughput is not None
    return option.estimate.cost_per_request * option.estimate.throughput * 3600.0


def replicas(total_load: float, max_utilisation: float) -> int:
    return max(1, math.ceil(total_load / max_utilisation - ROUNDING))


def servers(graph: GraphModel, selection: Mapping[tuple[str, Phase], Option]
            ) -> tuple[list[Server], list[str]]:
    """The servers a selection implies, and where it gives one pool two servers of a group."""
    rate = graph.sla.target_requests_per_second
    out: list[Server] = []
    broken: list[str] = []
    if rate is None:
        return out, broken
    for key, members in graph.groups.items():
        for phase in ("prefill", "decode"):
            by_pool: dict[str, list[tuple[str, Option]]] = {}
            for step in members:
                o = selection[(step, phase)]
                by_pool.setdefault(o.pool, []).append((step, o))
            for pool, placed in sorted(by_pool.items()):
                shapes = {(o.estimate.tensor_parallel, o.estimate.batch) for _, o in placed}
                if len(shapes) > 1:
                    broken.append(f"server:{key}:{phase}:{pool}: steps "
                                  f"{', '.join(s for s, _ in placed)} share one server, planned "
                                  f"at {len(shapes)} different (TP, batch)")
                first = placed[0][1]
                loads = tuple(load(o, rate, graph.visits[s]) for s, o in placed)
                out.append(Server(
                    group=key, phase=phase, pool=pool,
                    tensor_parallel=first.estimate.tensor_parallel, batch=first.estimate.batch,
                    members=tuple(s for s, _ in placed), loads=loads,
                    replicas=replicas(sum(loads), graph.planning.max_utilisation),
                    units=first.estimate.units, replica_hour=replica_hour(first)))
    return out, broken
