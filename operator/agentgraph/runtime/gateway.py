"""The gateway: one per AgentGraph, the graph's front door.

  POST /v1/invoke            any JSON request -> {"outputs": {<last step>: <output>}, ...}
                             (?outputs=all: every step's last output)
  POST /v1/chat/completions  OpenAI-compatible, for graphs that end in text; "stream": true
                             streams the last step's tokens when it is an LLM step (SSE)
  GET  /healthz, /readyz     liveness; ready once the graph and its pods are known
  GET  /metrics              (metrics port) end-to-end and per-step latency, errors, in flight

In a cluster it reads the graph from its ConfigMap and the step pods from the API server, both
watched, so a replan reaches it without a restart. For benchmarks and tests it also runs from a
file with fixed endpoints. Past ``maxInFlight`` requests it answers 503 at once (back-pressure)
rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from agentgraph.api.graph import StepKind
from agentgraph.api.naming import LABEL_GRAPH, runtime_config_name
from agentgraph.api.runtime import CONFIG_KEY, REQUEST_ID_HEADER, TIMEOUT_HEADER, RuntimeGraph
from agentgraph.runtime import http
from agentgraph.runtime.endpoints import Endpoint, Endpoints
from agentgraph.runtime.execute import Executor, Outcome, StepError
from agentgraph.runtime.kube import KubeAPI, Objects
from agentgraph.runtime.metrics import GatewayMetrics, handler

log = logging.getLogger("agentgraph.gateway")
DRAIN_GRACE_S = 25.0


class Gateway:
    def __init__(self, endpoints: Endpoints | None = None, client: http.Client | None = None
                 ) -> None:
        self.endpoints = endpoints or Endpoints()
        self.client = client or http.Client()
        self.graph: RuntimeGraph | None = None
        self.executor: Executor | None = None
        self.metrics: GatewayMetrics | None = None
        self.pods: Objects = {}
        self.pods_synced = False
        self.in_flight = 0
        self.draining = False

    # ------------------------------------------------------------------------- configuration
    def configure(self, graph: RuntimeGraph) -> None:
        if self.metrics is None:
            self.metrics = GatewayMetrics(graph.sla_seconds)
        self.metrics.sla.labels(graph.graph).set(graph.sla_seconds)
        self.graph = graph
        self.executor = Executor(graph, self.endpoints, self.client, self.metrics)
        if self.pods_synced:
            self.on_pods(self.pods)
        log.info("graph %s/%s generation %s: %d steps, %d blocks", graph.namespace, graph.graph,
                 graph.generation, len(graph.steps), len(graph.blocks))

    def on_config_maps(self, objects: Objects) -> None:
        for obj in objects.values():
            text = obj.get("data", {}).get(CONFIG_KEY)
            if text:
                try:
                    self.configure(RuntimeGraph.model_validate_json(text))
                except ValueError as e:  # an operator of another version: keep the last one
                    log.error("ignoring %s: %s", obj["metadata"]["name"], e)

    def on_pods(self, pods: Objects) -> None:
        self.pods = pods
        self.pods_synced = True
        if self.graph is None:
            return
        self.endpoints.update(self.graph, pods)
        if self.metrics is not None:
            for step in self.graph.steps:
                for phase in step.phases:
                    self.metrics.endpoints.labels(self.graph.graph, step.name, phase.phase).set(
                        self.endpoints.count(step.name, phase.phase))

    @property
    def ready(self) -> bool:
        return self.graph is not None and self.pods_synced and not self.draining

    # ------------------------------------------------------------------------------- routes
    def routes(self) -> dict[tuple[str, str], http.Handler]:
        return {("POST", "/v1/invoke"): self.invoke,
                ("POST", "/v1/chat/completions"): self.chat,
                ("GET", "/healthz"): self.healthz, ("GET", "/readyz"): self.readyz}

    async def healthz(self, _: http.Request) -> http.Response:
        return http.Response.json({"status": "alive"})

    async def readyz(self, _: http.Request) -> http.Response:
        if self.ready:
            return http.Response.json({"status": "ready"})
        return http.Response.json({"status": "not ready", "graph": self.graph is not None,
                                   "pods": self.pods_synced}, 503)

    def _admit(self, request: http.Request) -> tuple[str, float] | http.Response:
        """The request's id and deadline, or the answer refusing it."""
        graph = self.graph
        if graph is None or self.executor is None or self.draining:
            return http.Response.json({"error": {"reason": "the gateway is not ready"}}, 503)
        if self.in_flight >= graph.max_in_flight:
            self._count(503)
            return http.Response.json(
                {"error": {"reason": f"the gateway is at its limit of {graph.max_in_flight} "
                           "requests in flight; retry later"}}, 503, [("Retry-After", "1")])
        timeout = graph.request_timeout_seconds
        asked = request.headers.get(TIMEOUT_HEADER)
        if asked is not None:
            try:
                timeout = min(timeout, float(asked) / 1000)
            except ValueError:
                return http.Response.json({"error": {"reason": f"bad {TIMEOUT_HEADER}"}}, 400)
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        return request_id, asyncio.get_running_loop().time() + timeout

    def _count(self, code: int) -> None:
        if self.metrics is not None and self.graph is not None:
            self.metrics.requests.labels(self.graph.graph, str(code)).inc()

    async def _run(self, payload: Any, request_id: str, deadline: float,
                   stream_step: str | None = None,
                   sink: Any = None) -> Outcome | StepError:
        assert self.executor is not None and self.graph is not None and self.metrics
        graph = self.graph.graph
        self.in_flight += 1
        self.metrics.in_flight.labels(graph).inc()
        started = time.perf_counter()
        outcome: Outcome | StepError
        try:
            outcome = await self.executor.run(payload, request_id, deadline, stream_step, sink)
        except StepError as e:
            outcome = e
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.labels(graph).dec()
        elapsed = time.perf_counter() - started
        ok = not isinstance(outcome, StepError)
        self.metrics.duration.labels(graph, "ok" if ok else "error").observe(elapsed)
        self._count(200 if ok else outcome.status)  # type: ignore[union-attr]
        return outcome

    def _sinks(self) -> list[str]:
        assert self.graph is not None
        by_id = {b.id: b for b in self.graph.blocks}
        names: list[str] = []
        for bid in self.graph.sinks:
            block = by_id[bid]
            if block.step is not None:
                names.append(block.step)
            elif block.loop is not None:
                names.extend(block.loop.heads)  # a loop is left after its heads
        return names

    async def invoke(self, request: http.Request) -> http.Response:
        admitted = self._admit(request)
        if isinstance(admitted, http.Response):
            return admitted
        request_id, deadline = admitted
        try:
            payload = request.json()
        except orjson.JSONDecodeError as e:
            return http.Response.json({"error": {"reason": f"the body is not JSON: {e}"}}, 400)
        started = time.perf_counter()
        outcome = await self._run(payload, request_id, deadline)
        if isinstance(outcome, StepError):
            return http.Response.json(outcome.body(request_id), outcome.status,
                                      [("X-Request-Id", request_id)])
        every = "outputs=all" in request.query.split("&")
        names = list(outcome.outputs) if every else self._sinks()
        return http.Response.json({
            "requestId": request_id,
            "latencySeconds": round(time.perf_counter() - started, 6),
            "outputs": {name: outcome.outputs.get(name) for name in names},
            "steps": [{"step": v.step, "phase": v.phase, "pool": v.pool, "pod": v.pod,
                       "iteration": v.iteration, "seconds": round(v.seconds, 6)}
                      for v in outcome.visits],
        }, headers=[("X-Request-Id", request_id)])

    async def chat(self, request: http.Request) -> http.Response | http.StreamResponse:
        admitted = self._admit(request)
        if isinstance(admitted, http.Response):
            return admitted
        request_id, deadline = admitted
        try:
            body = request.json() or {}
            messages = list(body.get("messages") or [])
        except (orjson.JSONDecodeError, AttributeError, TypeError) as e:
            return http.Response.json({"error": {"message": f"bad request: {e}"}}, 400)
        sinks = self._sinks()
        if len(sinks) != 1:
            return http.Response.json({"error": {"message": "this graph ends in "
                                                 f"{len(sinks)} steps, not one text answer; "
                                                 "use /v1/invoke"}}, 400)
        last = sinks[0]
        text = next((str(m.get("content", "")) for m in reversed(messages)
                     if isinstance(m, Mapping) and m.get("role") == "user"), "")
        payload = {"messages": messages, "text": text}
        model = str(body.get("model") or (self.graph.graph if self.graph else ""))
        created = int(time.time())
        if not body.get("stream"):
            outcome = await self._run(payload, request_id, deadline)
            if isinstance(outcome, StepError):
                return http.Response.json(outcome.body(request_id), outcome.status)
            content = _text(outcome.outputs.get(last))
            if content is None:
                return http.Response.json({"error": {"message": f"the graph's last step "
                                                     f"'{last}' answered no text"}}, 502)
            return http.Response.json({
                "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": created,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant",
                                                         "content": content}}]})
        return http.StreamResponse(self._chat_stream(payload, request_id, deadline, last,
                                                     model, created),
                                   content_type="text/event-stream")

    async def _chat_stream(self, payload: Any, request_id: str, deadline: float, last: str,
                           model: str, created: int) -> AsyncIterator[bytes]:
        assert self.graph is not None
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        streams = next(s for s in self.graph.steps if s.name == last).kind is StepKind.LLM

        async def sink(token: str) -> None:
            queue.put_nowait(token)

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk",
                     "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        async def run() -> Outcome | StepError:
            try:
                return await self._run(payload, request_id, deadline,
                                       last if streams else None, sink)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        yield event({"role": "assistant"})
        sent = False
        try:
            while (token := await queue.get()) is not None:
                sent = True
                yield event({"content": token})
            outcome = await task
        finally:
            task.cancel()
        if isinstance(outcome, StepError):
            yield b"data: " + orjson.dumps(outcome.body(request_id)) + b"\n\n"
        else:
            if not sent:
                yield event({"content": _text(outcome.outputs.get(last)) or ""})
            yield event({}, "stop")
        yield b"data: [DONE]\n\n"


def _text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("text"), str):
        return str(output["text"])
    return None


def static_endpoints(specs: list[str]) -> Endpoints:
    """``step/phase=host:port[,host:port...]`` (phase "run" may be left out)."""
    endpoints = Endpoints()
    for spec in specs:
        target, _, addresses = spec.partition("=")
        step, _, phase = target.partition("/")
        endpoints.set(step, phase or "run",
                      [Endpoint(f"{step}-{i}", a, "static")
                       for i, a in enumerate(addresses.split(","))])
    return endpoints


async def serve(host: str, port: int, metrics_port: int, graph_name: str | None,
                namespace: str | None, config_file: str | None,
                static: list[str]) -> None:
    gateway = Gateway(static_endpoints(static) if static else None)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    if config_file is not None:
        with open(config_file, "rb") as f:
            gateway.configure(RuntimeGraph.model_validate_json(f.read()))
        gateway.pods_synced = True
    else:
        if graph_name is None:
            raise SystemExit("agentgraph gateway: --graph NAME (in a cluster) or --config FILE")
        namespace = namespace or KubeAPI.namespace()
        if namespace is None:
            raise SystemExit("agentgraph gateway: no namespace (POD_NAMESPACE or --namespace)")
        api = KubeAPI.in_cluster()
        base = f"/api/v1/namespaces/{namespace}"
        tasks.append(asyncio.create_task(api.watch(
            f"{base}/configmaps",
            {"fieldSelector": f"metadata.name={runtime_config_name(graph_name)}"},
            gateway.on_config_maps, stop)))
        tasks.append(asyncio.create_task(api.watch(
            f"{base}/pods", {"labelSelector": f"{LABEL_GRAPH}={graph_name}"}, gateway.on_pods,
            stop)))

    server = http.Server(gateway.routes())
    await server.listen(host, port)
    metrics_server = http.Server({("GET", "/metrics"): _metrics(gateway)})
    await metrics_server.listen(host, metrics_port)
    log.info("gateway listening on %s:%d (metrics :%d)", host, port, metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    gateway.draining = True
    await server.shutdown(DRAIN_GRACE_S)
    await metrics_server.shutdown(1)
    for task in tasks:
        task.cancel()


def _metrics(gateway: Gateway) -> http.Handler:
    async def serve_metrics(request: http.Request) -> http.Response | http.StreamResponse:
        if gateway.metrics is None:
            return http.Response(200, b"", content_type="text/plain; version=0.0.4")
        return await handler(gateway.metrics.registry)(request)

    return serve_metrics
