"""Which pods serve each step phase, and which one takes the next call.

The gateway watches the graph's Pods and keeps, per step phase, those that are Ready, have an IP
and are not being deleted: what an EndpointSlice would hold, read straight from the Pods, as the
Gateway API inference extension's endpoint picker reads an InferencePool's pods. No kube-proxy,
no EndpointSlices (the API server refuses loopback addresses in them, so on the local cluster they
stay empty), and the same code runs on a real cluster. The pick is the less busy of two random
endpoints (power of two choices), by calls in flight from this gateway.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentgraph.api.naming import LABEL_POOL
from agentgraph.api.runtime import RuntimeGraph


@dataclass
class Endpoint:
    pod: str
    address: str  # host:port
    pool: str
    in_flight: int = 0


def pod_ready(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions", []))


class Endpoints:
    def __init__(self, seed: int | None = None) -> None:
        self.by_phase: dict[tuple[str, str], list[Endpoint]] = {}
        self.random = random.Random(seed)

    def set(self, step: str, phase: str, endpoints: Iterable[Endpoint]) -> None:
        self.by_phase[(step, phase)] = list(endpoints)

    def update(self, graph: RuntimeGraph, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """Rebuild from the pods; endpoints that stay keep their in-flight counts."""
        known = {e.pod: e for group in self.by_phase.values() for e in group}
        fresh: dict[tuple[str, str], list[Endpoint]] = {}
        ready = [p for p in pods.values() if pod_ready(p)]
        for step in graph.steps:
            for phase in step.phases:
                group = []
                for pod in ready:
                    labels = pod["metadata"].get("labels", {})
                    if any(labels.get(k) != v for k, v in phase.selector.items()):
                        continue
                    name = pod["metadata"]["name"]
                    address = f"{pod['status']['podIP']}:{phase.port}"
                    old = known.get(name)
                    if old is not None and old.address == address:
                        group.append(old)
                    else:
                        group.append(Endpoint(name, address, labels.get(LABEL_POOL, phase.pool)))
                fresh[(step.name, phase.phase)] = sorted(group, key=lambda e: e.pod)
        self.by_phase = fresh

    def count(self, step: str, phase: str) -> int:
        return len(self.by_phase.get((step, phase), []))

    def pick(self, step: str, phase: str, exclude: Iterable[str] = ()) -> Endpoint | None:
        skip = set(exclude)
        group = [e for e in self.by_phase.get((step, phase), []) if e.pod not in skip]
        if not group:
            return None
        if len(group) == 1:
            return group[0]
        a, b = self.random.sample(group, 2)
        return a if a.in_flight <= b.in_flight else b
