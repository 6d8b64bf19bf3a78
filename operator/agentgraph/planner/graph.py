"""Flatten sub-agents, check the graph, and derive the timing structure (blocks and loops).

A *block* is what the end-to-end latency is computed over: a single step, or a bounded loop. A
loop's body is its steps with the back edges into its head removed; the body's sources are its
*heads* (the head step, or a sub-agent head's entry steps). An iteration runs the heads, and the
graph leaves the loop right there when they say so (as the gateway does); otherwise the rest of
the body runs and the next iteration begins. So a loop that runs its heads k times runs the rest
k - 1 times: ``expectedIterations`` and ``maxIterations`` count the heads' visits. Blocks form a
DAG.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import networkx as nx

from agentgraph.api import naming
from agentgraph.api.graph import SLA, AgentGraph, Loop, Planning, PoolConstraints, Step, StepKind
from agentgraph.planner.errors import Issue, PlanningError


@dataclass(frozen=True)
class FlatStep:
    name: str  # unique across the flattened graph: "<agent>.<step>" inside sub-agents
    step: Step
    path: str  # field path of the step in the spec
    deps: tuple[str, ...]


@dataclass(frozen=True)
class LoopBlock:
    name: str
    path: str
    steps: tuple[str, ...]
    expected: float
    maximum: int
    body_preds: dict[str, tuple[str, ...]]  # inside the body, back edges removed
    heads: tuple[str, ...] = ()  # the body's sources: what every iteration starts with

    @property
    def rest(self) -> tuple[str, ...]:
        """The steps after the heads: they run once fewer than the heads."""
        return tuple(s for s in self.steps if s not in self.heads)

    def rest_preds(self, step: str) -> tuple[str, ...]:
        """A rest step's predecessors among the rest (the heads are done when the rest starts)."""
        return tuple(p for p in self.body_preds[step] if p not in self.heads)


@dataclass(frozen=True)
class Block:
    id: str  # the step's name, or "loop:<name>"
    preds: tuple[str, ...]  # block ids
    step: str | None = None
    loop: LoopBlock | None = None


@dataclass(frozen=True)
class GraphModel:
    name: str
    sla: SLA
    planning: Planning
    steps: dict[str, FlatStep]
    blocks: tuple[Block, ...]  # topological order, ties by id
    block_of: dict[str, str]
    visits: dict[str, float]  # expected visits per request
    max_visits: dict[str, int]
    sinks: tuple[str, ...] = field(default=())
    # Model servers shared by steps naming one model: a group's key (the model's name and
    # dtype) -> its steps, in graph order; only groups of two or more, only with a request rate.
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def group_of(self) -> dict[str, str]:
        return {step: key for key, members in self.groups.items() for step in members}

    def unshared(self) -> GraphModel:
        """The same graph with every step on servers of its own."""
        return replace(self, groups={})


@dataclass
class _Scope:
    """What one step list (the top level or one agent's) flattens to."""

    steps: list[FlatStep] = field(default_factory=list)
    loops: list[tuple[Loop, str, str, list[str]]] = field(default_factory=list)
    entries: dict[str, list[str]] = field(default_factory=dict)  # local name -> flat entry steps
    exits: dict[str, list[str]] = field(default_factory=dict)  # local name -> flat exit steps


def build(graph: AgentGraph) -> GraphModel:
    """Validate and flatten; raises PlanningError naming every bad field at once."""
    issues: list[Issue] = []
    scope = _flatten(graph.spec.steps, graph.spec.loops, "", "spec", issues)
    if issues:
        raise PlanningError(issues)
    steps = {s.name: s for s in scope.steps}
    digraph = nx.DiGraph()
    digraph.add_nodes_from(steps)
    digraph.add_edges_from((d, s.name) for s in scope.steps for d in s.deps)

    loop_of: dict[str, int] = {}
    back_edges: set[tuple[str, str]] = set()
    for index, (loop, path, prefix, members) in enumerate(scope.loops):
        for j, member in enumerate(members):
            if member in loop_of:
                issues.append(Issue(f"{path}.steps[{j}]", f"step {member} is already in another "
                                    "loop; nested or overlapping loops are not supported"))
            loop_of[member] = index
        head = prefix + loop.steps[0]
        head_steps = set(_head_steps(loop, prefix, members))
        member_set = set(members)
        # A back edge enters the head from a loop member outside it; edges inside a sub-agent
        # head are its own forward edges. (A plain head's self-dependency is a back edge.)
        back_edges.update(
            (u, v) for u, v in digraph.edges
            if v in head_steps and u in member_set and not u.startswith(head + ".")
        )
    _check_cycles(digraph, loop_of, back_edges, scope, issues)
    _check_object_names(graph.metadata.name, scope, issues)
    if issues:
        raise PlanningError(issues)
    return _structure(graph, steps, digraph, scope, loop_of, back_edges)


def _head_steps(loop: Loop, prefix: str, members: list[str]) -> list[str]:
    """The flat steps the loop's head stands for (a sub-agent head stands for its entries)."""
    head = prefix + loop.steps[0]
    return [m for m in members if m == head or m.startswith(head + ".")]


def _flatten(
    steps: Sequence[Step], loops: Sequence[Loop], prefix: str, path: str, issues: list[Issue]
) -> _Scope:
    scope = _Scope()
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        here = f"{path}.steps[{i}]"
        if step.name in seen:
            issues.append(Issue(f"{here}.name", f"duplicate step name '{step.name}' "
                                f"(also {path}.steps[{seen[step.name]}])"))
            continue
        seen[step.name] = i
        if step.kind is StepKind.AGENT and step.agent is not None:
            inner = _flatten(step.agent.steps, step.agent.loops, f"{prefix}{step.name}.",
                             f"{here}.agent", issues)
            scope.steps.extend(inner.steps)
            scope.loops.extend(inner.loops)
            scope.entries[step.name] = _entry_points(inner)
            scope.exits[step.name] = _exit_points(inner)
        else:
            flat = FlatStep(name=prefix + step.name, step=step, path=here, deps=())
            scope.steps.append(flat)
            scope.entries[step.name] = [flat.name]
            scope.exits[step.name] = [flat.name]
    # Resolve dependsOn now that every local name is known.
    extra: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        for j, dep in enumerate(step.depends_on):
            if dep not in scope.exits:
                issues.append(Issue(f"{path}.steps[{i}].dependsOn[{j}]",
                                    f"unknown step '{dep}'"))
                continue
            for entry in scope.entries.get(step.name, []):
                extra.setdefault(entry, []).extend(scope.exits[dep])
    scope.steps = [
        FlatStep(s.name, s.step, s.path, tuple(dict.fromkeys([*s.deps, *extra.get(s.name, [])])))
        for s in scope.steps
    ]
    for k, loop in enumerate(loops):
        members: list[str] = []
        for j, name in enumerate(loop.steps):
            if name not in scope.exits:
                issues.append(Issue(f"{path}.loops[{k}].steps[{j}]", f"unknown step '{name}'"))
                continue
            members.extend(m for m in _all_under(scope, prefix, name) if m not in members)
        scope.loops.append((loop, f"{path}.loops[{k}]", prefix, members))
    return scope


def _all_under(scope: _Scope, prefix: str, local: str) -> list[str]:
    full = prefix + local
    return [s.name for s in scope.steps if s.name == full or s.name.startswith(full + ".")]


def _entry_points(inner: _Scope) -> list[str]:
    names = {s.name for s in inner.steps}
    heads = {prefix + loop.steps[0] for loop, _, prefix, _ in inner.loops}
    return [
        s.name for s in inner.steps
        if not any(d in names for d in s.deps) or (s.name in heads and _deps_in_own_loop(s, inner))
    ]


def _deps_in_own_loop(step: FlatStep, inner: _Scope) -> bool:
    for _, _, _, members in inner.loops:
        if step.name in members:
            return all(d in members for d in step.deps)
    return False


def _exit_points(inner: _Scope) -> list[str]:
    used = {d for s in inner.steps for d in s.deps}
    exits = [s.name for s in inner.steps if s.name not in used]
    return exits or [inner.steps[-1].name]


def _check_cycles(
    digraph: nx.DiGraph,
    loop_of: dict[str, int],
    back_edges: set[tuple[str, str]],
    scope: _Scope,
    issues: list[Issue],
) -> None:
    for component in nx.strongly_connected_components(digraph):
        members = sorted(component)
        cyclic = len(members) > 1 or digraph.has_edge(members[0], members[0])
        if not cyclic:
            continue
        owners = {loop_of.get(m) for m in members}
        loops = sorted(o for o in owners if o is not None)
        if len(loops) == 1 and None in owners:
            outside = sorted(m for m in members if m not in loop_of)
            issues.append(Issue(f"{scope.loops[loops[0]][1]}.steps", f"steps {outside} lie on "
                                "this loop's cycle but are not listed in it"))
        elif None in owners or len(owners) != 1:
            edges = nx.find_cycle(digraph.subgraph(members))
            cycle = " -> ".join([u for u, _ in edges] + [edges[0][0]])
            where = next(s.path for s in scope.steps if s.name == edges[0][1])
            issues.append(Issue(f"{where}.dependsOn", f"cycle {cycle} has no bound: list its "
                                "steps in one entry of spec.loops with maxIterations"))
    forward = digraph.copy()
    forward.remove_edges_from(back_edges)
    for loop, path, _, members in scope.loops:
        body = forward.subgraph(members)
        if not nx.is_directed_acyclic_graph(body):
            issues.append(Issue(f"{path}.steps", f"the loop body still has a cycle once the edges "
                                f"into its head '{loop.steps[0]}' are removed: nested loops are "
                                "not supported"))


def _check_object_names(graph: str, scope: _Scope, issues: list[Issue]) -> None:
    """Two steps must not render one object: ``chat`` (an LLM step: chat-prefill, chat-decode)
    and a step ``chat-prefill``; a sub-agent's ``a.b`` and a top-level ``a-b``."""
    owner = {naming.gateway_name(graph): "the graph's gateway"}
    for flat in scope.steps:
        phases = ("prefill", "decode") if flat.step.kind is StepKind.LLM else (None,)
        for phase in phases:
            name = naming.object_name(graph, flat.name, phase)
            mine = f"step {flat.name} ({flat.path})"
            other = owner.setdefault(name, mine)
            if other != mine:
                issues.append(Issue(f"{flat.path}.name", f"step {flat.name} would render "
                                    f"objects named '{name}', as {other} does; rename one"))
                break


def _structure(
    graph: AgentGraph,
    steps: dict[str, FlatStep],
    digraph: nx.DiGraph,
    scope: _Scope,
    loop_of: dict[str, int],
    back_edges: set[tuple[str, str]],
) -> GraphModel:
    loop_blocks: dict[int, LoopBlock] = {}
    never: list[Issue] = []  # loops whose rest of the body can never run
    for index, (loop, path, prefix, members) in enumerate(scope.loops):
        name = loop.name or (prefix + loop.steps[0])
        member_set = set(members)
        body_preds = {
            m: tuple(d for d in steps[m].deps if d in member_set and (d, m) not in back_edges)
            for m in members
        }
        heads = tuple(m for m in members if not body_preds[m])
        loop_blocks[index] = LoopBlock(name, path, tuple(members), loop.expected_iterations,
                                       loop.max_iterations, body_preds, heads)
        rest = loop_blocks[index].rest
        if rest and loop.max_iterations < 2:
            never.append(Issue(
                f"{path}.maxIterations", f"1 never runs {', '.join(rest)}: the graph leaves "
                "the loop after its heads, and the rest of the body runs only when it goes "
                "round again; give at least 2, or move those steps out of the loop"))
    if never:
        raise PlanningError(never)
    block_of = {
        s: (f"loop:{loop_blocks[loop_of[s]].name}" if s in loop_of else s) for s in steps
    }
    block_graph = nx.DiGraph()
    block_graph.add_nodes_from(sorted(set(block_of.values())))
    for u, v in digraph.edges:
        if block_of[u] != block_of[v]:
            block_graph.add_edge(block_of[u], block_of[v])
    if not nx.is_directed_acyclic_graph(block_graph):
        cycle = [u for u, _ in nx.find_cycle(block_graph)]
        paths = {scope.loops[i][1]: lb.name for i, lb in loop_blocks.items()
                 if f"loop:{lb.name}" in cycle}
        raise PlanningError([
            Issue(f"{path}.steps", f"loop '{name}' is not closed: a step outside it lies on a "
                  f"path between two of its steps ({' -> '.join(cycle)})")
            for path, name in sorted(paths.items())
        ])
    by_id = {f"loop:{b.name}": b for b in loop_blocks.values()}
    blocks = tuple(
        Block(
            id=bid,
            preds=tuple(sorted(block_graph.predecessors(bid))),
            step=None if bid in by_id else bid,
            loop=by_id.get(bid),
        )
        for bid in nx.lexicographical_topological_sort(block_graph)
    )
    visits = {s: 1.0 for s in steps}
    max_visits = dict.fromkeys(steps, 1)
    for loop_block in loop_blocks.values():
        for m in loop_block.steps:
            once_fewer = m not in loop_block.heads
            visits[m] = loop_block.expected - once_fewer
            max_visits[m] = loop_block.maximum - once_fewer
    sinks = tuple(b.id for b in blocks if block_graph.out_degree(b.id) == 0)
    return GraphModel(
        groups=_groups(graph, steps),
        name=graph.metadata.name,
        sla=graph.spec.sla,
        planning=graph.spec.planning,
        steps=steps,
        blocks=blocks,
        block_of=block_of,
        visits=visits,
        max_visits=max_visits,
        sinks=sinks,
    )


def group_key(step: Step) -> str | None:
    """The model server a step may share: its model's name and dtype; None when it cannot
    share (no model name, opted out, an external server, its own container, or priced from a
    table)."""
    work = step.llm
    if (step.kind is not StepKind.LLM or work is None or not work.share_server
            or work.model.name is None or work.server is not None
            or step.container is not None or step.cost_model != "default"):
        return None
    return f"{work.model.name}@{work.model.dtype_bytes:g}"


def _groups(graph: AgentGraph, steps: dict[str, FlatStep]) -> dict[str, tuple[str, ...]]:
    """Steps naming one model share its servers. Without a request rate there are no replicas
    to share (each request is priced alone), so no groups."""
    by_key: dict[str, list[FlatStep]] = {}
    for flat in steps.values():
        key = group_key(flat.step)
        if key is not None:
            by_key.setdefault(key, []).append(flat)
    if graph.spec.sla.target_requests_per_second is None:
        return {}
    issues = []
    for members in by_key.values():
        first = members[0]
        assert first.step.llm is not None
        for other in members[1:]:
            assert other.step.llm is not None
            if other.step.llm.model != first.step.llm.model:
                issues.append(Issue(
                    f"{other.path}.llm.model", f"names model '{first.step.llm.model.name}' as "
                    f"step {first.name} ({first.path}) does, with another shape: steps "
                    "naming one model share its servers, so give both the same shape, or "
                    "another name"))
    if issues:
        raise PlanningError(issues)
    return {key: tuple(f.name for f in members) for key, members in by_key.items()
            if len(members) > 1}


def check_pools(graph: GraphModel, pools: Collection[str]) -> None:
    """Every pool a step names must be one of ``pools``."""
    known = set(pools)
    issues: list[Issue] = []
    for flat in graph.steps.values():
        step = flat.step
        groups: list[tuple[str, PoolConstraints | None]] = [("constraints", step.constraints)]
        if step.llm is not None:
            groups += [("llm.prefill", step.llm.prefill), ("llm.decode", step.llm.decode)]
        for where, c in groups:
            if c is None:
                continue
            for key, names in (("allowedPools", c.allowed_pools),
                               ("forbiddenPools", c.forbidden_pools),
                               ("pinnedPool", [c.pinned_pool] if c.pinned_pool else [])):
                for j, name in enumerate(names):
                    if name not in known:
                        suffix = "" if key == "pinnedPool" else f"[{j}]"
                        issues.append(Issue(f"{flat.path}.{where}.{key}{suffix}",
                                            f"unknown pool '{name}' "
                                            f"(known: {', '.join(sorted(known))})"))
        if step.table is not None:
            for j, entry in enumerate(step.table.entries):
                if entry.pool not in known:
                    issues.append(Issue(f"{flat.path}.table.entries[{j}].pool",
                                        f"unknown pool '{entry.pool}'"))
    if issues:
        raise PlanningError(issues)
