"""Walk a graph for one request: blocks in dependency order, independent ones at once, bounded
loops, a deadline per call from the time left, retries only where they are safe.

Deadlines. A request has one deadline. A call may use the time left minus what the rest of the
graph is predicted to need after it (``reserve``), but never less than ``MIN_CALL_S`` while time
is left: a slow step is cut where waiting longer would make the whole request late anyway, and a
step the planner under-predicts is not cut for that alone.

Loops. An iteration runs the loop's heads; the loop goes round again only when a head's answer
says ``"continue": true`` and ``maxIterations`` is not reached; otherwise the graph leaves the
loop right after the heads. Then the rest of the body runs and feeds the heads again.

Retries. A call that never reached a pod (connection refused, no ready pod answering) or that a
pod refused unprocessed (503: not ready, overloaded) goes to another pod, for any step. A call
that failed after reaching a pod is retried only if the step is idempotent, up to its retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentgraph.api.graph import StepKind
from agentgraph.api.runtime import (
    REQUEST_ID_HEADER,
    RUN_PATH,
    TIMEOUT_HEADER,
    PhaseEndpoint,
    RuntimeGraph,
    RuntimeLoop,
    RuntimeStep,
)
from agentgraph.runtime import http
from agentgraph.runtime.endpoints import Endpoints
from agentgraph.runtime.metrics import GatewayMetrics

MIN_CALL_S = 0.05


class StepError(Exception):
    """A step phase failed; ``cause`` is one of timeout, unavailable, overloaded, failed."""

    def __init__(self, step: str, phase: str, status: int, cause: str, reason: str) -> None:
        super().__init__(f"step {step} ({phase}): {reason}")
        self.step, self.phase, self.status, self.cause, self.reason = (
            step, phase, status, cause, reason)

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": {"step": self.step, "phase": self.phase, "cause": self.cause,
                          "reason": self.reason, "requestId": request_id}}


class _Retry(Exception):
    """The call did not run on that pod: try another."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Visit:
    step: str
    phase: str
    pool: str
    pod: str
    seconds: float
    iteration: int


@dataclass
class Outcome:
    outputs: dict[str, Any]
    visits: list[Visit] = field(default_factory=list)


TokenSink = Callable[[str], Awaitable[None]]


def _longest(nodes: Sequence[str], preds: Mapping[str, Sequence[str]],
             cost: Mapping[str, float]) -> float:
    finish: dict[str, float] = {}
    for node in nodes:  # topological order
        finish[node] = cost[node] + max((finish[p] for p in preds.get(node, ()) if p in finish),
                                        default=0.0)
    return max(finish.values(), default=0.0)


class Executor:
    def __init__(self, graph: RuntimeGraph, endpoints: Endpoints, client: http.Client,
                 metrics: GatewayMetrics | None = None) -> None:
        self.graph = graph
        self.endpoints = endpoints
        self.client = client
        self.metrics = metrics
        self.steps = {s.name: s for s in graph.steps}
        self._histograms: dict[tuple[str, str, str], Any] = {}
        self.step_time = {s.name: sum(p.predicted_seconds for p in s.phases)
                          for s in graph.steps}
        self.block_of: dict[str, str] = {}
        self.body_time: dict[str, float] = {}
        block_time: dict[str, float] = {}
        for block in graph.blocks:
            if block.step is not None:
                self.block_of[block.step] = block.id
                block_time[block.id] = self.step_time[block.step]
            elif block.loop is not None:
                loop = block.loop
                for name in loop.steps:
                    self.block_of[name] = block.id
                # As the planner times it: every iteration runs the heads, all but the last
                # one the rest of the body too.
                heads = max(self.step_time[h] for h in loop.heads)
                rest = _longest([s for s in _order(loop) if s not in loop.heads],
                                loop.body_preds, self.step_time)  # heads: done, at 0
                self.body_time[block.id] = heads + rest
                block_time[block.id] = (loop.expected_iterations * heads
                                        + (loop.expected_iterations - 1) * rest)
        successors: dict[str, list[str]] = {b.id: [] for b in graph.blocks}
        for block in graph.blocks:
            for pred in block.preds:
                successors[pred].append(block.id)
        self.tail: dict[str, float] = {}
        for block in reversed(graph.blocks):
            self.tail[block.id] = max((block_time[s] + self.tail[s] for s in successors[block.id]),
                                      default=0.0)

    def observe(self, step: str, phase: str, pool: str, seconds: float) -> None:
        key = (step, phase, pool)
        child = self._histograms.get(key)
        if child is None:
            assert self.metrics is not None
            child = self._histograms[key] = self.metrics.step.labels(self.graph.graph, *key)
        child.observe(seconds)

    # ---------------------------------------------------------------------------- the walk
    async def run(self, request: Any, request_id: str, deadline: float,
                  stream_step: str | None = None, sink: TokenSink | None = None) -> Outcome:
        outcome = Outcome(outputs={})
        walk = _Walk(self, request, request_id, deadline, outcome, stream_step, sink)
        blocks = {b.id: b for b in self.graph.blocks}

        async def run_block(bid: str) -> None:
            block = blocks[bid]
            if block.step is not None:
                await walk.visit(block.step, 0)
            elif block.loop is not None:
                await walk.loop(block.loop)

        await _dag([b.id for b in self.graph.blocks], {b.id: b.preds for b in self.graph.blocks},
                   run_block)
        return outcome

    def reserve(self, step: str, iteration: int) -> float:
        """Predicted time the graph still needs after this visit of ``step``."""
        block = self.block_of[step]
        rest = self.tail[block]
        loop = next((b.loop for b in self.graph.blocks if b.id == block and b.loop), None)
        if loop is not None:
            rest += max(0.0, loop.expected_iterations - iteration - 1) * self.body_time[block]
        return rest


def _order(loop: RuntimeLoop) -> list[str]:
    """The loop's steps, each after its body predecessors."""
    placed: list[str] = []
    pending = list(loop.steps)
    while pending:
        ready = [s for s in pending if all(p in placed for p in loop.body_preds.get(s, ()))]
        if not ready:  # cannot happen for a validated graph; keep the given order
            ready = pending[:1]
        placed.extend(ready)
        pending = [s for s in pending if s not in ready]
    return placed


async def _dag(nodes: Sequence[str], preds: Mapping[str, Sequence[str]],
               run: Callable[[str], Awaitable[None]]) -> None:
    """Run every node once all its predecessors among ``nodes`` are done; the first failure
    cancels the rest and is raised. A plain chain (each node after the first depends on the
    one before it, and only on it) runs inline, without tasks."""
    inside = set(nodes)
    if all(set(preds.get(n, ())) & inside == ({nodes[i - 1]} if i else set())
           for i, n in enumerate(nodes)):
        for node in nodes:
            await run(node)
        return
    try:
        async with asyncio.TaskGroup() as group:
            tasks: dict[str, asyncio.Task[None]] = {}

            async def after(node: str, deps: list[asyncio.Task[None]]) -> None:
                for dep in deps:
                    await dep
                await run(node)

            for node in nodes:
                deps = [tasks[p] for p in preds.get(node, ()) if p in inside and p in tasks]
                tasks[node] = group.create_task(after(node, deps))
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None


def _first(error: BaseExceptionGroup[BaseException]) -> BaseException:
    for inner in error.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            return _first(inner)
        if isinstance(inner, StepError):
            return inner
    return error.exceptions[0]


class _Walk:
    """One request's state."""

    def __init__(self, executor: Executor, request: Any, request_id: str, deadline: float,
                 outcome: Outcome, stream_step: str | None, sink: TokenSink | None) -> None:
        self.x = executor
        self.request = request
        self.request_id = request_id
        self.deadline = deadline
        self.outcome = outcome
        self.stream_step = stream_step
        self.sink = sink

    async def loop(self, loop: RuntimeLoop) -> None:
        heads = set(loop.heads)
        rest = [s for s in _order(loop) if s not in heads]
        for iteration in range(loop.max_iterations):
            verdicts = await asyncio.gather(*(self.visit(h, iteration) for h in loop.heads))
            if not any(verdicts) or iteration == loop.max_iterations - 1:
                return

            async def body(name: str, iteration: int = iteration) -> None:
                await self.visit(name, iteration)

            await _dag(rest, loop.body_preds, body)

    async def visit(self, name: str, iteration: int) -> bool:
        """Run one visit of a step (both phases of an LLM step); True when it asks its loop to
        go round again."""
        step = self.x.steps[name]
        outputs = self.outcome.outputs
        inputs = {d: outputs[d] for d in step.depends_on if d in outputs}
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = self.deadline - now
        if left <= 0:
            raise StepError(name, step.phases[0].phase, 504, "timeout",
                            "the request's deadline passed before this step could start")
        end = max(self.deadline - self.x.reserve(name, iteration), now + min(left, MIN_CALL_S))
        end = min(end, self.deadline)
        if step.timeout_seconds is not None:
            end = min(end, now + step.timeout_seconds)
        proceed = False
        started = time.perf_counter()  # TTFT is measured from here (not the loop's ms clock)
        for i, phase in enumerate(step.phases):
            # An earlier phase leaves the later ones their predicted time (the same rule).
            after = sum(p.predicted_seconds for p in step.phases[i + 1:])
            phase_end = min(end, max(end - after, now + min(end - now, MIN_CALL_S)))
            payload = {"inputs": inputs, "request": self.request, "iteration": iteration,
                       "step": name}
            streaming = step.kind is StepKind.LLM and phase.phase == "decode"
            answer = await self.call(step, phase, payload, phase_end, streaming, started)
            if i == len(step.phases) - 1:
                outputs[name] = answer.get("output")
                proceed = bool(answer.get("continue"))
            else:
                inputs = {**inputs, phase.phase: answer.get("output")}
            now = loop.time()
        return proceed

    async def call(self, step: RuntimeStep, phase: PhaseEndpoint, payload: dict[str, Any],
                   end: float, streaming: bool, step_started: float) -> dict[str, Any]:
        tried: list[str] = []  # pods that did not take the call: never again for it
        failed: list[str] = []  # pods where it failed: a retry prefers another
        refused = ""
        retries = step.retries if step.idempotent else 0
        loop = asyncio.get_running_loop()
        budget = max(0.0, end - loop.time())
        while True:
            endpoint = (self.x.endpoints.pick(step.name, phase.phase, tried + failed)
                        or self.x.endpoints.pick(step.name, phase.phase, tried))
            if endpoint is None:
                why = (f"every ready pod refused it (tried {', '.join(tried)}; last: {refused})"
                       if tried else "no ready pod")
                cause = "overloaded" if "overloaded" in refused else "unavailable"
                raise self._error(step, phase, phase.pool, 503, cause, why)
            left = end - loop.time()
            if left <= 0:
                raise self._error(step, phase, endpoint.pool, 504, "timeout",
                                  f"no answer within its deadline of {budget:.3g} s")
            endpoint.in_flight += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout_at(end):
                    answer = await self._send(endpoint.address, payload, left, streaming,
                                              step, step_started)
            except _Retry as e:
                tried.append(endpoint.pod)
                refused = e.reason
                continue
            except TimeoutError:
                raise self._error(step, phase, endpoint.pool, 504, "timeout",
                                  f"no answer within its deadline of {budget:.3g} s") from None
            except StepError as e:
                if retries > 0 and e.cause == "failed" and e.status >= 500:
                    retries -= 1
                    failed.append(endpoint.pod)
                    continue
                raise self._error(step, phase, endpoint.pool, e.status, e.cause,
                                  e.reason) from None
            finally:
                endpoint.in_flight -= 1
            elapsed = time.perf_counter() - started
            if self.x.metrics is not None:
                self.x.observe(step.name, phase.phase, endpoint.pool, elapsed)
            self.outcome.visits.append(Visit(step.name, phase.phase, endpoint.pool,
                                             endpoint.pod, elapsed, payload["iteration"]))
            return answer

    def _error(self, step: RuntimeStep, phase: PhaseEndpoint, pool: str, status: int,
               cause: str, reason: str) -> StepError:
        if self.x.metrics is not None:
            self.x.metrics.errors.labels(self.x.graph.graph, step.name, phase.phase, pool,
                                         cause).inc()
        return StepError(step.name, phase.phase, status, cause, reason)

    async def _send(self, address: str, payload: dict[str, Any], left: float, streaming: bool,
                    step: RuntimeStep, step_started: float) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: self.request_id,
                   TIMEOUT_HEADER: str(max(1, int(left * 1000)))}
        url = f"http://{address}{RUN_PATH}"
        body = orjson.dumps({**payload, "stream": True} if streaming else payload)
        try:
            if not streaming:
                got = await self.x.client.request("POST", url, body, headers)
                return self._answer(got.status, got.json() if got.body else None, step)
            async with self.x.client.stream("POST", url, body, headers) as (head, chunks):
                if head.status != 200:
                    raw = b"".join([c async for c in chunks])
                    return self._answer(head.status, orjson.loads(raw) if raw else None, step)
                return await self._tokens(chunks, step, step_started)
        except http.HTTPError as e:
            if not e.sent:
                raise _Retry(str(e)) from e
            raise StepError(step.name, "", 502, "failed", f"connection to {address}: {e}") from e
        except orjson.JSONDecodeError as e:
            raise StepError(step.name, "", 502, "failed", f"{address} answered bad JSON: {e}"
                            ) from e

    def _answer(self, status: int, data: Any, step: RuntimeStep) -> dict[str, Any]:
        if status == 200 and isinstance(data, dict):
            return data
        error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        reason = str(error.get("reason") or f"answered {status}")
        if status == 503:
            raise _Retry(reason)  # not ready or overloaded: the pod did not take it
        cause = "timeout" if status == 504 else "failed"
        raise StepError(step.name, "", status if status >= 400 else 502, cause, reason)

    async def _tokens(self, chunks: Any, step: RuntimeStep, step_started: float
                      ) -> dict[str, Any]:
        last: float | None = None
        m = self.x.metrics
        forward = self.sink if step.name == self.stream_step else None
        async for line in http.lines(chunks):
            event = orjson.loads(line)
            if "token" in event:
                now = time.perf_counter()
                if m is not None:
                    if last is None:
                        m.ttft.labels(self.x.graph.graph, step.name).observe(
                            now - step_started)
                    else:
                        m.tbt.labels(self.x.graph.graph, step.name).observe(now - last)
                last = now
                if forward is not None:
                    await forward(str(event["token"]))
            elif "error" in event:
                reason = str(event["error"].get("reason", "stream failed"))
                raise StepError(step.name, "", 504 if "deadline" in reason else 502,
                                "timeout" if "deadline" in reason else "failed", reason)
            else:
                answer: dict[str, Any] = event
                return answer
        raise StepError(step.name, "", 502, "failed", "the token stream ended without an output")
