"""A placed graph run in one event loop, no cluster: a worker per step phase replica on an
ephemeral port, and a gateway with those endpoints. The same code the pods run; only the pod
discovery is replaced by a fixed endpoint list."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import Plan
from agentgraph.controller import runtime_config
from agentgraph.planner import solve
from agentgraph.runtime import gateway, http, steps
from agentgraph.runtime.endpoints import Endpoint, Endpoints
from agentgraph.runtime.worker import Worker


@dataclass
class Running:
    plan: Plan
    url: str
    gateway: gateway.Gateway
    workers: dict[tuple[str, str], list[Worker]] = field(default_factory=dict)
    servers: list[http.Server] = field(default_factory=list)
    client: http.Client = field(default_factory=http.Client)

    async def invoke(self, body: Any, path: str = "/v1/invoke",
                     headers: Mapping[str, str] | None = None) -> http.ClientResponse:
        return await self.client.post_json(self.url + path, body, headers)


@contextlib.asynccontextmanager
async def running(graph: AgentGraph, profiles: list[HardwareProfile],
                  replicas: Mapping[str, int] | None = None, plan: Plan | None = None,
                  ) -> AsyncIterator[Running]:
    """``replicas``: replicas per step name to run here (default one per step phase)."""
    plan = plan or solve.plan(graph, profiles)
    assert plan.feasible, plan.reasons
    by_name = {p.name: p for p in profiles}
    endpoints = Endpoints(seed=1)
    gw = gateway.Gateway(endpoints)
    servers: list[http.Server] = []
    workers: dict[tuple[str, str], list[Worker]] = {}
    for a in plan.assignments:
        config = runtime_config.worker_config(graph, plan, a, by_name, "test")
        group = []
        for i in range((replicas or {}).get(a.step, 1)):
            backend = steps.backend(config, 0)
            worker = Worker(config, backend)
            server = http.Server(worker.routes())
            port = await server.listen("127.0.0.1", 0)
            if hasattr(backend, "port"):
                backend.port = port  # the KV hand-off URL names the prefill worker's port
            await worker.start()
            servers.append(server)
            workers.setdefault((a.step, a.phase or "run"), []).append(worker)
            group.append(Endpoint(f"{a.step}-{a.phase or 'run'}-{i}", f"127.0.0.1:{port}",
                                  a.pool))
        endpoints.set(a.step, a.phase or "run", group)
    gw.configure(runtime_config.runtime_graph(graph, plan, "test"))
    gw.pods_synced = True
    server = http.Server(gw.routes())
    port = await server.listen("127.0.0.1", 0)
    servers.append(server)
    run = Running(plan, f"http://127.0.0.1:{port}", gw, workers, servers)
    try:
        yield run
    finally:
        run.client.close()
        for s in servers:
            await s.shutdown(0.5)
