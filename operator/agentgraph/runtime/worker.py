"""A step worker: the step contract over HTTP (see api/runtime.py) around one backend.

The worker admits at most ``backend.slots`` requests at once (the planned batch) and lets a
bounded number wait (``QUEUE_FACTOR`` times as many); past that it answers 503 at once, so
load shows up as back-pressure at the gateway instead of an unbounded queue here. Every request
carries its time left; a request that runs out of it ends with 504, never hangs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from agentgraph.api.runtime import (
    REQUEST_ID_HEADER,
    RUN_PATH,
    TIMEOUT_HEADER,
    WorkerConfig,
)
from agentgraph.runtime import http
from agentgraph.runtime.metrics import WorkerMetrics, handler

log = logging.getLogger("agentgraph.worker")
DEFAULT_TIMEOUT_S = 60.0  # a request that states no deadline
QUEUE_FACTOR = 4  # requests allowed to wait, per slot
DRAIN_GRACE_S = 25.0  # under the pod's 30 s termination grace period


class StepFailure(Exception):
    """The step could not produce its output: answered with ``status`` and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Call:
    inputs: dict[str, Any]
    request: Any
    iteration: int
    stream: bool
    deadline: float  # on the event loop's clock
    request_id: str

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


@dataclass
class Result:
    output: Any = None
    # A loop head's verdict: True runs the loop's body again; absent or False leaves the loop.
    proceed: bool | None = None
    # Decode: the tokens as they come; ``output`` is then built by ``finish`` from them.
    tokens: AsyncIterator[str] | None = None
    finish: Callable[[list[str]], Any] | None = None
    close: Callable[[], Awaitable[None]] | None = None  # what the tokens hold, once done


class Backend(Protocol):
    mode: str  # "real" or "emulator": a metric label, so emulated time is never taken for real
    slots: int

    async def start(self) -> None: ...

    async def run(self, call: Call) -> Result: ...

    def routes(self) -> Mapping[tuple[str, str], http.Handler]: ...


def _error(status: int, reason: str, config: WorkerConfig) -> http.Response:
    return http.Response.json({"error": {"step": config.step, "phase": config.phase,
                                         "reason": reason}}, status)


class _Series:
    """One served step's metrics: its own labels, so a shared server's steps stay apart."""

    def __init__(self, m: WorkerMetrics, config: WorkerConfig, mode: str) -> None:
        self.labels = (config.graph, config.step, config.phase, config.pool, mode)
        self.requests = m.requests
        self.duration = m.duration.labels(*self.labels)
        self.service = m.service.labels(*self.labels)
        self.queue = m.queue.labels(*self.labels)
        self.in_flight = m.in_flight.labels(*self.labels)
        self.ttft = m.ttft.labels(*self.labels)
        self.tbt = m.tbt.labels(*self.labels)
        self.codes = {code: m.requests.labels(*self.labels, str(code))
                      for code in (200, 400, 500, 502, 503, 504)}
        # What the service time is compared with: a decode fed from another pool waits for
        # the KV cache first, and its service time includes that wait.
        m.predicted.labels(*self.labels).set(config.predicted_seconds + (
            config.kv.predicted_seconds if config.kv else 0.0))

    def count(self, code: int) -> None:
        counter = self.codes.get(code)
        if counter is None:
            counter = self.codes[code] = self.requests.labels(*self.labels, str(code))
        counter.inc()


class Worker:
    """``members``: on a shared model server, the backend of each other step it serves (one
    set of slots for them all: the server's batch)."""

    def __init__(self, config: WorkerConfig, backend: Backend,
                 metrics: WorkerMetrics | None = None,
                 members: Mapping[str, Backend] | None = None) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics or WorkerMetrics()
        self.ready = False
        self.draining = False
        self.slots = asyncio.Semaphore(backend.slots)
        self.waiting = 0
        self._closing: set[asyncio.Future[None]] = set()
        served = config.served()
        self.backends: dict[str, Backend] = {config.step: backend, **(members or {})}
        if set(self.backends) != set(served):
            raise ValueError(f"backends for {sorted(self.backends)}, configured to serve "
                             f"{sorted(served)}")
        self.configs = served
        self.series = {step: _Series(self.metrics, served[step], b.mode)
                       for step, b in self.backends.items()}
        self._series = self.series[config.step]

    def routes(self) -> dict[tuple[str, str], http.Handler]:
        extra: dict[tuple[str, str], http.Handler] = {}
        for b in reversed(list(self.backends.values())):  # the server's own step's first
            extra.update(b.routes())
        return {("POST", RUN_PATH): self.handle, ("GET", "/healthz"): self.healthz,
                ("GET", "/readyz"): self.readyz, **extra}

    async def start(self) -> None:
        started = time.perf_counter()
        for b in self.backends.values():
            await b.start()
        self.ready = True
        log.info("%s/%s (%s, %s on %s): ready in %.2f s", self.config.step, self.config.phase,
                 self.config.kind, self.backend.mode, self.config.pool,
                 time.perf_counter() - started)

    async def healthz(self, _: http.Request) -> http.Response:
        return http.Response.json({"status": "alive"})

    async def readyz(self, _: http.Request) -> http.Response:
        if self.ready and not self.draining:
            return http.Response.json({"status": "ready"})
        return http.Response.json({"status": "draining" if self.draining else "starting"}, 503)

    def _count(self, code: int) -> None:
        self._series.count(code)

    async def handle(self, request: http.Request) -> http.Response | http.StreamResponse:
        loop = asyncio.get_running_loop()
        # Deadlines on the loop's clock (asyncio's timeouts use it); figures on perf_counter:
        # uvloop's loop.time() moves in whole milliseconds, too coarse for a 5 ms step.
        due = loop.time()
        arrived = time.perf_counter()
        timeout = request.headers.get(TIMEOUT_HEADER)
        try:
            body = request.json() or {}
            left = float(timeout) / 1000 if timeout is not None else DEFAULT_TIMEOUT_S
        except (ValueError, orjson.JSONDecodeError) as e:
            self._count(400)
            return _error(400, f"bad request: {e}", self.config)
        if not isinstance(body, dict) or not isinstance(body.get("inputs", {}), dict):
            self._count(400)
            return _error(400, "bad request: expected {\"inputs\": {...}, ...}", self.config)
        step = body.get("step") or self.config.step
        if not isinstance(step, str) or step not in self.backends:
            self._count(400)
            return _error(400, f"bad request: this server runs {', '.join(self.backends)}, "
                          f"not {step!r}", self.config)
        series, backend, config = self.series[step], self.backends[step], self.configs[step]
        if not self.ready or self.draining:
            series.count(503)
            return _error(503, "not ready", config)
        if left <= 0:
            series.count(504)
            return _error(504, "deadline already passed on arrival", config)
        if self.waiting >= self.backend.slots * QUEUE_FACTOR:
            series.count(503)
            return _error(503, f"overloaded: {self.waiting} requests already waiting for "
                          f"{self.backend.slots} slots", config)
        call = Call(inputs=body.get("inputs") or {}, request=body.get("request"),
                    iteration=int(body.get("iteration") or 0), stream=bool(body.get("stream")),
                    deadline=due + left,
                    request_id=request.headers.get(REQUEST_ID_HEADER, ""))
        series.in_flight.inc()
        self.waiting += 1
        acquired = streaming = False
        try:
            async with asyncio.timeout(left):
                await self.slots.acquire()
                acquired = True
                self.waiting -= 1
                started = time.perf_counter()
                series.queue.observe(started - arrived)
                result = await backend.run(call)
                if result.tokens is not None:
                    if call.stream:
                        streaming = True
                        return self._stream(call, result, arrived, started, series, config)
                    result = await self._collect(result, call, series)
        except StepFailure as e:
            series.count(e.status)
            return _error(e.status, e.reason, config)
        except TimeoutError:
            series.count(504)
            return _error(504, f"deadline of {left:.3g} s exceeded", config)
        finally:
            if not acquired:
                self.waiting -= 1
            if not streaming:  # a stream releases its slot when its last line is written
                if acquired:
                    self.slots.release()
                series.in_flight.dec()
        done = time.perf_counter()
        series.service.observe(done - started)
        series.duration.observe(done - arrived)
        series.count(200)
        out: dict[str, Any] = {"output": result.output}
        if result.proceed is not None:
            out["continue"] = result.proceed
        return http.Response.json(out)

    async def _collect(self, result: Result, call: Call, series: _Series) -> Result:
        assert result.tokens is not None
        tokens: list[str] = []
        try:
            async for token in self._timed(result.tokens, series):
                tokens.append(token)
        finally:
            if result.close is not None:
                await result.close()
        output = result.finish(tokens) if result.finish else "".join(tokens)
        return Result(output=output, proceed=result.proceed)

    async def _timed(self, tokens: AsyncIterator[str], series: _Series) -> AsyncIterator[str]:
        first = True
        last = time.perf_counter()
        async for token in tokens:
            now = time.perf_counter()
            if not first:
                series.tbt.observe(now - last)
            first = False
            last = now
            yield token

    def _stream(self, call: Call, result: Result, arrived: float, started: float,
                series: _Series, config: WorkerConfig) -> http.StreamResponse:
        """Tokens as NDJSON lines, then the output; the slot is held until the last line."""
        assert result.tokens is not None
        released = False
        code = 200

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if result.close is not None:
                closing = asyncio.ensure_future(result.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            self.slots.release()
            series.in_flight.dec()
            done = time.perf_counter()
            series.service.observe(done - started)
            series.duration.observe(done - arrived)
            series.count(code)

        async def lines() -> AsyncIterator[bytes]:
            nonlocal code
            tokens: list[str] = []
            try:
                async with asyncio.timeout_at(call.deadline):
                    async for token in self._timed(result.tokens,  # type: ignore[arg-type]
                                                   series):
                        if not tokens:
                            series.ttft.observe(time.perf_counter() - arrived)
                        tokens.append(token)
                        yield orjson.dumps({"token": token}) + b"\n"
                output = result.finish(tokens) if result.finish else "".join(tokens)
                out: dict[str, Any] = {"output": output}
                if result.proceed is not None:
                    out["continue"] = result.proceed
                yield orjson.dumps(out) + b"\n"
            except TimeoutError:
                code = 504
                yield orjson.dumps({"error": {"step": config.step, "phase": config.phase,
                                              "reason": "deadline exceeded while streaming"}}
                                   ) + b"\n"
            finally:
                release()

        return http.StreamResponse(lines(), on_close=release)


async def serve(config: WorkerConfig, backend: Backend, host: str, port: int,
                metrics_port: int, ready: Callable[[], Awaitable[None]] | None = None,
                members: Mapping[str, Backend] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: not ready at once, in-flight requests finish."""
    metrics = WorkerMetrics()
    worker = Worker(config, backend, metrics, members)
    server = http.Server(worker.routes())
    metrics_server = http.Server({("GET", "/metrics"): handler(metrics.registry)})
    await server.listen(host, port)
    await metrics_server.listen(host, metrics_port)
    log.info("%s/%s/%s listening on %s:%d (metrics :%d)", config.graph, config.step,
             config.phase, host, port, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(worker.start())
    if ready is not None:
        await starting
        await ready()
    await stop.wait()
    log.info("draining")
    worker.draining = True
    starting.cancel()
    await server.shutdown(DRAIN_GRACE_S)
    await metrics_server.shutdown(1)
