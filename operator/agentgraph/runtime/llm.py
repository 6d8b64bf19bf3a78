"""LLM steps: the emulator (no GPU needed) and the adapter to an OpenAI-compatible server.

Emulator. Prefill waits the cost model's prefill time on its pool (prompt tokens, batch, TP),
keeps a stand-in for the KV cache and answers a handle to it; the decode worker (another pod,
maybe another pool) fetches that handle from the prefill pod over HTTP (the hand-off), waits the
rest of the planner's transfer time when the pools differ, then streams ``outputTokens`` tokens
at the cost model's time between tokens. The stand-in holds at most ``KV_STANDIN_BYTES``: a
70B model's real KV cache for 2k tokens is about 0.7 GB, which a loopback test need not copy.

Adapter (``llm.server``): prefill asks the server for one token (it computes the prompt's KV,
which the server's prefix cache or KV connector keeps), decode streams the answer from
``/v1/chat/completions``; ``kv_transfer_params`` a server returns (vLLM's disaggregated
serving) are passed from the first call to the second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from agentgraph.api.graph import LLMWorkload
from agentgraph.api.runtime import KV_PATH, WorkerConfig
from agentgraph.costs.llm import kv_cache_bytes
from agentgraph.runtime import emulator, http
from agentgraph.runtime.worker import Call, Result, StepFailure

KV_STANDIN_BYTES = 64 * 1024
KV_KEEP = 1024  # handles a prefill worker keeps for decode workers to fetch
KV_TTL_S = 120.0
_KV_STORE: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
WORDS = ("the", "plan", "meets", "its", "deadline", "on", "mixed", "hardware", "and", "every",
         "step", "runs", "where", "it", "costs", "least", "while", "answers", "stay", "fast")


def _workload(config: WorkerConfig) -> LLMWorkload:
    if config.spec.llm is None:
        raise ValueError(f"step {config.step}: an LLM worker needs the step's llm block")
    return config.spec.llm


def _my_address(port: int) -> str:
    """Where the decode worker finds this pod: its IP (the pod's env), as it listens."""
    host = os.environ.get("POD_IP") or os.environ.get("AGENTGRAPH_LISTEN_HOST") or "127.0.0.1"
    return f"{host}:{port}"


class EmulatedLLM:
    mode = "emulator"

    def __init__(self, config: WorkerConfig, port: int, client: http.Client | None = None
                 ) -> None:
        self.config = config
        self.work = _workload(config)
        self.slots = max(1, config.batch)
        self.port = port
        self.client = client or http.Client()
        found = emulator.estimate(config)
        if config.phase == "decode":
            tbt = (found.tbt if found is not None and found.tbt is not None
                   else config.predicted_tbt_seconds
                   or config.predicted_seconds / self.work.output_tokens)
            self.tbt = tbt * config.slowdown
            self.seconds = self.tbt * self.work.output_tokens
        else:
            self.tbt = 0.0
            self.seconds = emulator.seconds(config)
        # One store per process: the steps a shared model server runs hand off from one route.
        self.kv = _KV_STORE

    async def start(self) -> None:
        return None

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {("GET", KV_PATH): self.kv_handler()} if self.config.phase == "prefill" else {}

    def kv_handler(self) -> http.Handler:
        async def serve(request: http.Request) -> http.Response:
            handle = request.path[len(KV_PATH):]
            entry = self.kv.pop(handle, None)
            if entry is None:
                return http.Response.json({"error": {"reason": f"no KV cache {handle!r} (taken "
                                                     "or expired)"}}, 404)
            return http.Response(200, entry[1], content_type="application/octet-stream")

        return serve

    async def run(self, call: Call) -> Result:
        if self.config.phase == "prefill":
            return await self._prefill(call)
        return await self._decode(call)

    async def _prefill(self, call: Call) -> Result:
        if call.remaining() < self.seconds:
            raise StepFailure(504, f"prefill needs {self.seconds:.3g} s, "
                              f"{max(0.0, call.remaining()):.3g} s left")
        await emulator.wait(self.seconds)
        now = time.monotonic()
        while self.kv and (len(self.kv) >= KV_KEEP or next(iter(self.kv.values()))[0] < now):
            self.kv.popitem(last=False)
        handle = uuid.uuid4().hex
        size = kv_cache_bytes(self.work.model, self.work.input_tokens, 1)
        blob = hashlib.sha256(handle.encode()).digest() * (KV_STANDIN_BYTES // 32)
        self.kv[handle] = (now + KV_TTL_S, blob)
        return Result(output={
            "emulated": True, "promptTokens": self.work.input_tokens,
            "kv": {"url": f"http://{_my_address(self.port)}{KV_PATH}{handle}",
                   "bytes": size, "pool": self.config.pool}})

    async def _decode(self, call: Call) -> Result:
        loop = asyncio.get_running_loop()
        handoff = next((v.get("kv") for v in call.inputs.values()
                        if isinstance(v, Mapping) and isinstance(v.get("kv"), Mapping)), None)
        if handoff is not None:
            started = loop.time()
            try:
                got = await self.client.request("GET", str(handoff["url"]))
            except http.HTTPError as e:
                raise StepFailure(502, f"KV hand-off from {handoff['url']} failed: {e}") from e
            if got.status != 200:
                raise StepFailure(502, f"KV hand-off from {handoff['url']} answered "
                                  f"{got.status}")
            if self.config.kv is not None:  # another pool: the link takes the planner's time
                left = self.config.kv.predicted_seconds * self.config.slowdown - (
                    loop.time() - started)
                if left > 0:
                    await emulator.wait(left)
        if call.remaining() < self.seconds:
            raise StepFailure(504, f"decode needs {self.seconds:.3g} s, "
                              f"{max(0.0, call.remaining()):.3g} s left")
        proceed = emulator.loop_verdict(self.config, call)
        count = self.work.output_tokens
        seed = int.from_bytes(hashlib.sha256(call.request_id.encode()).digest()[:4], "big")

        async def tokens() -> AsyncIterator[str]:
            next_at = loop.time()
            for i in range(count):
                next_at += self.tbt
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                yield WORDS[(seed + i * 7) % len(WORDS)] + " "

        def finish(got: list[str]) -> dict[str, Any]:
            return {"emulated": True, "text": "".join(got).strip(), "tokens": len(got),
                    "model": self.work.model.name}

        return Result(tokens=tokens(), finish=finish, proceed=proceed)


class OpenAIAdapter:
    """The production path: the model runs in an OpenAI-compatible server."""

    mode = "real"

    def __init__(self, config: WorkerConfig, client: http.Client | None = None) -> None:
        self.config = config
        self.work = _workload(config)
        assert self.work.server is not None
        self.url = str(self.work.server.url).rstrip("/") + "/chat/completions"
        self.slots = max(1, config.batch) * 4  # the server batches; this only bounds waiting
        self.client = client or http.Client()
        self.headers = {"Content-Type": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    async def start(self) -> None:
        return None

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    def _messages(self, call: Call) -> list[dict[str, str]]:
        request = call.request if isinstance(call.request, Mapping) else {}
        messages = list(request.get("messages") or [])
        context = {k: v for k, v in call.inputs.items() if not (
            isinstance(v, Mapping) and ("kv" in v or "messages" in v))}
        if context:
            messages.insert(0, {"role": "system", "content": "Context from earlier steps: "
                                + orjson.dumps(context).decode()})
        if not any(m.get("role") == "user" for m in messages):
            messages.append({"role": "user", "content": str(request.get("text", ""))})
        return messages

    async def run(self, call: Call) -> Result:
        assert self.work.server is not None
        body: dict[str, Any] = {"model": self.work.server.model}
        timeout = {"X-Agentgraph-Timeout-Ms": str(int(call.remaining() * 1000))}
        if self.config.phase == "prefill":
            body.update(messages=self._messages(call), max_tokens=1, stream=False)
            got = await self._post(body, timeout)
            data = got.json() or {}
            return Result(output={"messages": body["messages"],
                                  "kv_transfer_params": data.get("kv_transfer_params")})
        previous = next((v for v in call.inputs.values()
                         if isinstance(v, Mapping) and "messages" in v), None)
        body.update(messages=(previous or {}).get("messages") or self._messages(call),
                    max_tokens=self.work.output_tokens, stream=True)
        if previous and previous.get("kv_transfer_params"):
            body["kv_transfer_params"] = previous["kv_transfer_params"]
        model = self.work.server.model
        stack = contextlib.AsyncExitStack()
        try:
            head, chunks = await stack.enter_async_context(self.client.stream(
                "POST", self.url, orjson.dumps(body), {**self.headers, **timeout}))
            if head.status != 200:
                text = b"".join([c async for c in chunks])[:300].decode(errors="replace")
                raise StepFailure(502, f"{self.url} answered {head.status}: {text}")
        except http.HTTPError as e:
            await stack.aclose()
            raise StepFailure(502, f"{self.url}: {e}") from e
        except BaseException:
            await stack.aclose()
            raise

        async def tokens() -> AsyncIterator[str]:
            async for line in http.lines(chunks):
                token = _sse_token(line)
                if token:
                    yield token

        def finish(got: list[str]) -> dict[str, Any]:
            return {"text": "".join(got), "tokens": len(got), "model": model}

        return Result(tokens=tokens(), finish=finish, close=stack.aclose)

    async def _post(self, body: dict[str, Any], headers: Mapping[str, str]
                    ) -> http.ClientResponse:
        try:
            got = await self.client.request("POST", self.url, orjson.dumps(body),
                                            {**self.headers, **headers})
        except http.HTTPError as e:
            raise StepFailure(502, f"{self.url}: {e}") from e
        if got.status != 200:
            raise StepFailure(502, f"{self.url} answered {got.status}: "
                              f"{got.body[:300].decode(errors='replace')}")
        return got


def _sse_token(line: bytes) -> str:
    line = line.strip()
    if not line.startswith(b"data:"):
        return ""
    data = line[5:].strip()
    if data == b"[DONE]":
        return ""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    choices = event.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or "")

