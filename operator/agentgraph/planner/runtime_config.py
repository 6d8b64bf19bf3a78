"""Plan -> what the gateway and each worker are told (api/runtime.py). Pure.

The gateway gets the graph as it executes it: blocks in topological order (a step, or a bounded
loop with its heads and body), each step phase's pod selector and port, and the predictions its
deadlines come from. A worker gets its step's spec, its pool's profile, the planned TP and batch
and the planner's prediction, which is all the emulator needs and all a real worker reports
against.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentgraph.api.graph import AgentGraph, Step
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.naming import selector
from agentgraph.api.plan import Assignment, Plan
from agentgraph.api.runtime import (
    HTTP_PORT,
    KVHandoff,
    LoopRole,
    PhaseEndpoint,
    RuntimeBlock,
    RuntimeGraph,
    RuntimeLoop,
    RuntimeStep,
    WorkerConfig,
)
from agentgraph.planner import graph as graph_model
from agentgraph.planner.graph import GraphModel

TIMEOUT_SLA_MULTIPLE = 2.0  # a request's deadline, absent spec.runtime.requestTimeoutSeconds
TIMEOUT_WORST_CASE_MULTIPLE = 1.25  # ... and never under the worst case (loops at their max)


def _predicted(plan: Plan, a: Assignment) -> float:
    """One visit of a step phase; a decode fed from another pool waits for the KV cache too."""
    if a.phase == "decode":
        return a.latency_seconds + sum(t.latency_seconds for t in plan.transfers
                                       if t.step == a.step)
    return a.latency_seconds


def step_port(step: Step) -> int:
    """Where a step's pods listen: its own container's port, else the reference worker's."""
    container = step.container
    return container.port if container is not None and container.port else HTTP_PORT


def request_timeout(graph: AgentGraph, plan: Plan) -> float:
    if graph.spec.runtime.request_timeout_seconds is not None:
        return graph.spec.runtime.request_timeout_seconds
    worst = plan.worst_case_latency_seconds or 0.0
    return max(TIMEOUT_SLA_MULTIPLE * graph.spec.sla.latency_seconds,
               TIMEOUT_WORST_CASE_MULTIPLE * worst)


def runtime_graph(graph: AgentGraph, plan: Plan, namespace: str,
                  model: GraphModel | None = None) -> RuntimeGraph:
    model = model or graph_model.build(graph)
    name = graph.metadata.name
    phases: dict[str, list[PhaseEndpoint]] = {}
    by_slot = {(a.step, a.phase): a for a in plan.assignments}
    for a in plan.assignments:
        serving = by_slot[(a.server, a.phase)] if a.server is not None else a  # its pods' step
        phases.setdefault(a.step, []).append(PhaseEndpoint(
            phase=a.phase or "run", selector=selector(name, serving.step, a.phase),
            port=step_port(model.steps[serving.step].step), pool=a.pool,
            predicted_seconds=_predicted(plan, a), batch=a.batch, replicas=serving.replicas))
    steps = []
    for flat in model.steps.values():
        runtime = flat.step.runtime
        steps.append(RuntimeStep(
            name=flat.name, kind=flat.step.kind, depends_on=list(flat.deps),
            phases=phases.get(flat.name, []),
            idempotent=bool(runtime and runtime.idempotent),
            retries=runtime.retries if runtime else 0,
            timeout_seconds=runtime.timeout_seconds if runtime else None))
    blocks = []
    for block in model.blocks:
        loop = None
        if block.loop is not None:
            body = block.loop.body_preds
            loop = RuntimeLoop(
                name=block.loop.name, steps=list(block.loop.steps),
                heads=list(block.loop.heads),
                body_preds={s: list(p) for s, p in body.items()},
                expected_iterations=block.loop.expected, max_iterations=block.loop.maximum)
        blocks.append(RuntimeBlock(id=block.id, preds=list(block.preds), step=block.step,
                                   loop=loop))
    return RuntimeGraph(
        graph=name, namespace=namespace, generation=graph.metadata.generation,
        sla_seconds=graph.spec.sla.latency_seconds, percentile=graph.spec.sla.percentile,
        request_timeout_seconds=request_timeout(graph, plan),
        max_in_flight=graph.spec.runtime.max_in_flight, steps=steps, blocks=blocks,
        sinks=list(model.sinks))


def _without_sources(profile: HardwareProfile) -> HardwareProfile:
    return profile.model_copy(update={
        "spec": profile.spec.model_copy(update={"sources": {}}),
        "metadata": profile.metadata.model_copy(update={"annotations": {}, "labels": {}})})


def worker_config(graph: AgentGraph, plan: Plan, a: Assignment,
                  profiles: Mapping[str, HardwareProfile], namespace: str,
                  model: GraphModel | None = None, slowdown: float = 1.0) -> WorkerConfig:
    """A step phase's worker; on a shared model server, the server's (its first step's), with
    a configuration for each other step it serves."""
    model = model or graph_model.build(graph)
    members = [worker_config(graph, plan, other, profiles, namespace, model, slowdown)
               for other in plan.assignments
               if a.server == a.step and other.server == a.step and other.step != a.step
               and other.phase == a.phase]
    flat = model.steps[a.step]
    loop = None
    for block in model.blocks:
        lb = block.loop
        # A loop head (its last phase answers): the emulator decides there when the loop ends.
        if lb is not None and a.step in lb.heads and a.phase in (None, "decode"):
            loop = LoopRole(expected_iterations=lb.expected, max_iterations=lb.maximum)
    kv = None
    if a.phase == "decode":
        transfer = next((t for t in plan.transfers if t.step == a.step), None)
        if transfer is not None:
            kv = KVHandoff(from_pool=transfer.from_pool, bytes=transfer.bytes_per_request,
                           predicted_seconds=transfer.latency_seconds)
    runtime = flat.step.runtime
    emulate = graph.spec.runtime.emulate if runtime is None or runtime.emulate is None \
        else runtime.emulate
    return WorkerConfig(
        graph=graph.metadata.name, namespace=namespace, step=a.step, phase=a.phase or "run",
        kind=flat.step.kind, pool=a.pool, emulate=emulate, tensor_parallel=a.tensor_parallel,
        batch=a.batch, units_per_replica=a.units_per_replica, predicted_seconds=a.latency_seconds,
        predicted_tbt_seconds=a.tbt_seconds, spec=flat.step,
        profile=_without_sources(profiles[a.pool]), loop=loop, kv=kv, slowdown=slowdown,
        members=members)
