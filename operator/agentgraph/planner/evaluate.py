"""Score one complete selection exactly, independently of the MILP that chose it.

The solver's answer is re-checked here; explain, baselines and the tests use the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agentgraph.costs.base import Phase
from agentgraph.planner.candidates import Option, StepOptions, Transfer, fits_one_node
from agentgraph.planner.graph import GraphModel, LoopBlock
from agentgraph.planner.sharing import Server, servers
from agentgraph.planner.snapshot import PODS, ClusterSnapshot

Selection = Mapping[tuple[str, Phase], Option]
REL_TOL = 1e-6


@dataclass(frozen=True)
class Evaluation:
    latency: float  # end to end, loops at expected iterations
    worst_latency: float  # loops at maximum iterations
    objective: float
    durations: dict[str, float]  # per step, one visit
    transfers: dict[str, Transfer]  # per LLM step whose phases sit on different pools
    ttft: dict[str, float]
    tbt: dict[str, float]
    usage: dict[str, float]  # held per capacity key: '<pool>' units, '<pool>/pods' pods
    critical_path: list[str]
    violations: list[str]
    servers: list[Server] = field(default_factory=list)  # model servers steps share

    @property
    def feasible(self) -> bool:
        return not self.violations


def exceeds(value: float, limit: float) -> bool:
    return value > limit * (1 + REL_TOL) + 1e-12


def evaluate(
    graph: GraphModel,
    options: Mapping[str, StepOptions],
    selection: Selection,
    snapshot: ClusterSnapshot,
) -> Evaluation:
    durations: dict[str, float] = {}
    transfers: dict[str, Transfer] = {}
    ttft: dict[str, float] = {}
    tbt: dict[str, float] = {}
    usage: dict[str, float] = {}
    violations: list[str] = []
    objective = 0.0
    shared = graph.group_of
    for name, opts in options.items():
        chosen = {phase: selection[(name, phase)] for phase in opts.slots}
        for option in chosen.values():
            block = snapshot.pool(option.pool).capacity_block
            if not fits_one_node(option.estimate.units, block):
                violations.append(f"capacity:{option.pool}: a replica of {name} needs "
                                  f"{option.estimate.units:.4g} units on one node, the most "
                                  f"free is {block:.4g}")
            if name in shared:  # its server's replicas are counted below, once
                continue
            objective += option.objective
            for key, amount in option.held:
                usage[key] = usage.get(key, 0.0) + amount
        if opts.is_llm:
            pre, dec = chosen["prefill"], chosen["decode"]
            transfer = opts.transfers.get((pre.pool, dec.pool))
            if transfer is None:
                violations.append(f"{name}: KV cache cannot move from {pre.pool} to {dec.pool}")
                kv = 0.0
            else:
                kv = transfer.estimate.latency
                objective += transfer.objective
                if transfer.src != transfer.dst:
                    transfers[name] = transfer
            step_tbt = dec.estimate.tbt or 0.0
            durations[name] = pre.estimate.latency + kv + dec.estimate.latency
            ttft[name] = pre.estimate.latency + kv + step_tbt
            tbt[name] = step_tbt
            if opts.ttft is not None and exceeds(ttft[name], opts.ttft):
                violations.append(f"ttft:{name}: {ttft[name]:.4g} s > {opts.ttft:.4g} s")
            if opts.tbt is not None and exceeds(step_tbt, opts.tbt):
                violations.append(f"tbt:{name}: {step_tbt:.4g} s > {opts.tbt:.4g} s")
        else:
            durations[name] = chosen["run"].estimate.latency
    found, broken = servers(graph, selection)
    violations.extend(broken)
    for server in found:
        objective += server.cost_per_hour
        usage[server.pool] = usage.get(server.pool, 0.0) + server.replicas * server.units
        usage[server.pool + PODS] = usage.get(server.pool + PODS, 0.0) + server.replicas
    latency, path = longest_path(graph, durations, worst=False)
    worst, _ = longest_path(graph, durations, worst=True)
    if exceeds(latency, graph.sla.latency_seconds):
        violations.append(
            f"sla.latencySeconds: {latency:.4g} s > {graph.sla.latency_seconds:.4g} s")
    for key, limit in snapshot.capacities().items():
        used = usage.get(key, 0.0)
        if exceeds(used, limit):
            what = "pods" if key.endswith(PODS) else "units"
            violations.append(f"capacity:{key}: needs {used:.4g} {what}, has {limit:.4g}")
    return Evaluation(latency, worst, objective, durations, transfers, ttft, tbt, usage, path,
                      sorted(violations), found)


def longest_path(
    graph: GraphModel, durations: Mapping[str, float], worst: bool
) -> tuple[float, list[str]]:
    """End-to-end latency over the block DAG and the steps on its critical path."""
    finish: dict[str, float] = {}
    path_to: dict[str, list[str]] = {}
    for block in graph.blocks:
        start, before = 0.0, []
        for p in block.preds:
            if finish[p] > start:
                start, before = finish[p], path_to[p]
        if block.loop is not None:
            length, loop_path = loop_length(block.loop, durations, worst)
            finish[block.id] = start + length
            path_to[block.id] = before + loop_path
        else:
            assert block.step is not None
            finish[block.id] = start + durations[block.step]
            path_to[block.id] = [*before, block.step]
    end = max(graph.sinks, key=lambda b: (finish[b], b))
    return finish[end], path_to[end]


def loop_length(loop: LoopBlock, durations: Mapping[str, float],
                worst: bool = False) -> tuple[float, list[str]]:
    """A loop's time, at expected or maximum iterations: each iteration runs the heads
    together, and every one but the last then runs the rest of the body, so k visits of the
    heads take k * H + (k - 1) * R. Also the steps on its critical path."""
    times = loop.maximum if worst else loop.expected
    head = max(loop.heads, key=lambda s: (durations[s], s))
    rest, rest_path = _rest_longest(loop, durations)
    return (times * durations[head] + (times - 1) * rest,
            [head, *rest_path] if times > 1 else [head])


def _rest_longest(loop: LoopBlock, durations: Mapping[str, float]) -> tuple[float, list[str]]:
    """The longest path through the rest of the body, which starts once the heads are done."""
    finish: dict[str, float] = {}
    path_to: dict[str, list[str]] = {}
    pending = list(loop.rest)
    while pending:  # the body is a DAG (checked by graph.build): each pass settles one step
        for step in pending:
            preds = loop.rest_preds(step)
            if all(p in finish for p in preds):
                start, before = 0.0, []
                for p in preds:
                    if finish[p] > start:
                        start, before = finish[p], path_to[p]
                finish[step] = start + durations[step]
                path_to[step] = [*before, step]
                pending.remove(step)
                break
    if not finish:
        return 0.0, []
    end = max(finish, key=lambda s: (finish[s], s))
    return finish[end], path_to[end]
