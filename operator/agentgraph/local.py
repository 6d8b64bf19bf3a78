"""A graph run on this machine, no cluster (`agentgraph serve FILE`, the runtime's tests and
benchmarks): planned as the operator would plan it, then a worker per step phase replica and a
gateway in one event loop, on loopback ports. The same code the pods run; only the pod
discovery is replaced by a fixed list of endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.plan import Plan
from agentgraph.planner import runtime_config, solve
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
                  host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Running]:
    """``replicas``: replicas per step name to run here (default: the plan's); the gateway
    listens on ``host``:``port`` (0: any free port)."""
    plan = plan or solve.plan(graph, profiles)
    assert plan.feasible, plan.reasons
    by_name = {p.name: p for p in profiles}
    endpoints = Endpoints(seed=1)
    gw = gateway.Gateway(endpoints)
    servers: list[http.Server] = []
    workers: dict[tuple[str, str], list[Worker]] = {}
    for a in plan.assignments:
        if a.server not in (None, a.step):
            continue  # served by its shared model server's workers (its first step's)
        config = runtime_config.worker_config(graph, plan, a, by_name, "test")
        group = []
        for i in range((replicas or {}).get(a.step, a.replicas)):
            backend = steps.backend(config, 0)
            members = {m.step: steps.backend(m, 0) for m in config.members}
            worker = Worker(config, backend, members=members)
            server = http.Server(worker.routes())
            bound = await server.listen("127.0.0.1", 0)
            for b in (backend, *members.values()):
                if hasattr(b, "port"):
                    b.port = bound  # the KV hand-off URL names the prefill worker's port
            await worker.start()
            servers.append(server)
            workers.setdefault((a.step, a.phase or "run"), []).append(worker)
            group.append(Endpoint(f"{a.step}-{a.phase or 'run'}-{i}", f"127.0.0.1:{bound}",
                                  a.pool))
        for step in config.served():
            endpoints.set(step, a.phase or "run", group)
    gw.configure(runtime_config.runtime_graph(graph, plan, "test"))
    gw.pods_synced = True
    server = http.Server(gw.routes())
    port = await server.listen(host, port)
    servers.append(server)
    run = Running(plan, f"http://{host}:{port}", gw, workers, servers)
    try:
        yield run
    finally:
        run.client.close()
        for s in servers:
            await s.shutdown(0.5)


async def serve(graph: AgentGraph, profiles: list[HardwareProfile], host: str, port: int,
                announce: Callable[[Running], None], plan: Plan | None = None) -> None:
    """Run until interrupted (``plan``: one already made, else planned here)."""
    async with running(graph, profiles, plan=plan, host=host, port=port) as run:
        announce(run)
        await asyncio.Event().wait()
