"""The gateway and workers in one process (the cluster's version is e2e/test_runtime.py): the
graph walk (parallel branches, loops, deadlines, retries, back-pressure), the OpenAI-compatible
endpoint, the OpenAI adapter, the KV hand-off, the step contract's errors, and the endpoint
picker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from agentgraph.api.graph import AgentGraph
from agentgraph.api.runtime import TIMEOUT_HEADER
from agentgraph.local import running
from agentgraph.planner import runtime_config, solve
from agentgraph.runtime import emulator, http, steps
from agentgraph.runtime.endpoints import Endpoint, Endpoints
from agentgraph.runtime.worker import Worker
from builders import LLAMA3_8B, compute, make_graph, shipped_profiles, tool

PROFILES = shipped_profiles()


def run(main: Any) -> Any:
    return asyncio.run(main())


def test_parallel_branches_run_at_the_same_time() -> None:
    graph = make_graph([tool("a", 0.05), tool("b", 0.3, ["a"]), tool("c", 0.3, ["a"]),
                        tool("d", 0.05, ["b", "c"])], sla=5)

    async def main() -> None:
        async with running(graph, PROFILES) as g:
            started = time.perf_counter()
            r = await g.invoke({"text": "hi"})
            elapsed = time.perf_counter() - started
            assert r.status == 200, r.body
            assert r.json()["steps"][0]["step"] == "a"
            assert {s["step"] for s in r.json()["steps"]} == {"a", "b", "c", "d"}
            assert 0.4 <= elapsed < 0.6, elapsed  # b and c overlap: 0.05 + 0.3 + 0.05

    run(main)


def test_independent_first_steps_run_at_the_same_time() -> None:
    """Two steps that depend on nothing are no chain: they start together (with a join after
    them, and without one)."""
    for graph, least in ((make_graph([tool("a", 0.3), tool("b", 0.3),
                                      tool("c", 0.05, ["a", "b"])], sla=5), 0.35),
                         (make_graph([tool("a", 0.3), tool("b", 0.3)], sla=5), 0.3)):
        asyncio.run(_together(graph, least))


async def _together(graph: AgentGraph, least: float) -> None:
    async with running(graph, PROFILES) as g:
        started = time.perf_counter()
        r = await g.invoke({"text": "hi"})
        elapsed = time.perf_counter() - started
        assert r.status == 200, r.body
        assert least <= elapsed < least + 0.2, elapsed  # a and b overlap


def loop_graph(expected: float, maximum: int) -> AgentGraph:
    return make_graph([tool("plan", 0.01, ["search"]), tool("search", 0.01, ["plan"]),
                       tool("answer", 0.01, ["plan"])], sla=5,
                      loops=[{"name": "research", "steps": ["plan", "search"],
                              "expectedIterations": expected, "maxIterations": maximum}])


def test_a_loop_goes_round_until_its_head_says_stop_and_never_past_its_bound() -> None:
    graph = loop_graph(2.5, 3)

    async def main() -> None:
        async with running(graph, PROFILES) as g:
            heads = []
            for i in range(12):
                rid = f"request-{i}"
                r = await g.invoke({"text": "q"}, headers={"X-Request-Id": rid})
                assert r.status == 200, r.body
                visits = [s["step"] for s in r.json()["steps"]]
                wanted = emulator.iterations(rid, 2.5, 3)
                assert visits.count("plan") == wanted
                assert visits.count("search") == wanted - 1  # the loop is left at its head
                assert visits[-1] == "answer" and visits.count("answer") == 1
                heads.append(wanted)
            assert set(heads) == {2, 3} and 2 <= sum(heads) / len(heads) <= 3

    run(main)


def test_iterations_average_the_expected_count() -> None:
    counts = [emulator.iterations(f"r{i}", 2.3, 4) for i in range(4000)]
    assert set(counts) == {2, 3}
    assert sum(counts) / len(counts) == pytest.approx(2.3, abs=0.03)
    assert {emulator.iterations(f"r{i}", 9.0, 4) for i in range(50)} == {4}  # the hard bound


def test_a_slow_step_ends_the_request_at_its_deadline() -> None:
    graph = make_graph([tool("quick", 0.01), tool("slow", 3.0, ["quick"])], sla=6,
                       runtime={"requestTimeoutSeconds": 0.5})

    async def main() -> None:
        async with running(graph, PROFILES) as g:
            started = time.perf_counter()
            r = await g.invoke({})
            assert time.perf_counter() - started < 1.0
            assert r.status == 504
            error = r.json()["error"]
            assert (error["step"], error["cause"]) == ("slow", "timeout")

    run(main)


def test_a_pod_that_never_answers_is_cut_at_the_deadline() -> None:
    graph = make_graph([tool("call", 0.01)], sla=2, runtime={"requestTimeoutSeconds": 0.4})

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # read nothing, answer nothing

        black_hole = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = black_hole.sockets[0].getsockname()[1]
        async with running(graph, PROFILES) as g:
            g.gateway.endpoints.set("call", "run", [Endpoint("hole", f"127.0.0.1:{port}", "x")])
            started = time.perf_counter()
            r = await g.invoke({})
            assert 0.3 < time.perf_counter() - started < 1.0
            assert r.status == 504 and r.json()["error"]["step"] == "call"
        black_hole.close()

    run(main)


class Flaky:
    """A tool's remote end that fails its first call."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: http.Request) -> http.Response:
        self.calls += 1
        if self.calls == 1:
            return http.Response.json({"error": "warming up"}, 500)
        return http.Response.json({"ok": self.calls})


@pytest.mark.parametrize("idempotent", [True, False])
def test_only_idempotent_steps_are_retried_after_a_failure(idempotent: bool) -> None:
    async def main() -> None:
        flaky = Flaky()
        server = http.Server({("POST", "/call"): flaky.handle})
        port = await server.listen("127.0.0.1", 0)
        runtime = {"idempotent": True, "retries": 1} if idempotent else {}
        graph = make_graph([{"name": "call", "kind": "tool", "runtime": runtime,
                             "tool": {"latencySeconds": 0.01,
                                      "url": f"http://127.0.0.1:{port}/call"}}], sla=2)
        async with running(graph, PROFILES) as g:
            r = await g.invoke({})
        await server.shutdown(0.1)
        if idempotent:
            assert r.status == 200 and flaky.calls == 2
        else:
            assert r.status == 502 and flaky.calls == 1
            error = r.json()["error"]
            assert error["step"] == "call" and "answered 500" in error["reason"]

    run(main)


def test_a_call_that_never_reached_a_pod_goes_to_another_even_when_not_idempotent() -> None:
    graph = make_graph([tool("call", 0.01)], sla=2)

    async def main() -> None:
        async with running(graph, PROFILES) as g:
            live = g.gateway.endpoints.by_phase[("call", "run")][0]
            dead = Endpoint("dead", "127.0.0.1:9", live.pool)  # nothing listens on port 9
            g.gateway.endpoints.set("call", "run", [dead, live])
            answers = [await g.invoke({}) for _ in range(10)]
            assert all(r.status == 200 for r in answers)
            assert {s["pod"] for r in answers for s in r.json()["steps"]} == {live.pod}
            g.gateway.endpoints.set("call", "run", [dead])
            r = await g.invoke({})
            assert r.status == 503 and "refused" in r.json()["error"]["reason"]

    run(main)


def test_past_its_limit_the_gateway_says_so_instead_of_queueing() -> None:
    graph = make_graph([tool("call", 0.3)], sla=2, runtime={"maxInFlight": 2})

    async def main() -> None:
        async with running(graph, PROFILES) as g:
            answers = await asyncio.gather(*(g.invoke({}) for _ in range(5)))
            codes = sorted(r.status for r in answers)
            assert codes == [200, 200, 503, 503, 503]
            refused = next(r for r in answers if r.status == 503)
            assert refused.headers.get("retry-after") == "1"
            assert "limit of 2" in refused.json()["error"]["reason"]

    run(main)


def llm_graph(**llm: Any) -> AgentGraph:
    return make_graph([tool("fetch", 0.01),
                       {"name": "chat", "kind": "llm", "dependsOn": ["fetch"],
                        "llm": {"model": LLAMA3_8B, "inputTokens": 256, "outputTokens": 8,
                                **llm}}], sla=3)


def _sse(body: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]"
            for line in body.split(b"\n\n") if line.startswith(b"data: ")]


def test_chat_completions_answers_and_streams_the_last_llm_steps_tokens() -> None:
    async def main() -> None:
        async with running(llm_graph(), PROFILES) as g:
            messages = {"model": "g", "messages": [{"role": "user", "content": "hello"}]}
            r = await g.invoke(messages, "/v1/chat/completions")
            assert r.status == 200, r.body
            answer = r.json()
            assert answer["object"] == "chat.completion"
            assert len(answer["choices"][0]["message"]["content"].split()) == 8
            r = await g.invoke({**messages, "stream": True}, "/v1/chat/completions")
            assert r.headers["content-type"] == "text/event-stream"
            events = _sse(r.body)
            assert events[-1] == "[DONE]"
            pieces = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
            assert len([p for p in pieces if p]) == 8  # one event per token, as generated
            assert events[-2]["choices"][0]["finish_reason"] == "stop"

    run(main)


def test_the_decode_worker_fetches_the_kv_cache_from_the_prefill_pod() -> None:
    async def main() -> None:
        async with running(llm_graph(), PROFILES) as g:
            [prefill] = g.workers[("chat", "prefill")]
            r = await g.invoke({"text": "hi"}, "/v1/invoke?outputs=all")
            assert r.status == 200
            assert prefill.backend.kv == {}  # type: ignore[attr-defined]  # handed over, gone
            decode = g.gateway.endpoints.by_phase[("chat", "decode")][0]
            stale = {"inputs": {"prefill": {"kv": {"url": f"{g.url}/v1/kv/none"}}}}
            got = await g.client.post_json(f"http://{decode.address}/v1/run", stale)
            assert got.status == 502 and "KV hand-off" in got.json()["error"]["reason"]

    run(main)


class FakeOpenAI:
    """An OpenAI-compatible server: what vLLM answers, by the protocol."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: http.Request) -> http.Response | http.StreamResponse:
        body = request.json()
        self.seen.append(body)
        if not body.get("stream"):
            return http.Response.json({"choices": [{"message": {"content": "H"}}],
                                       "kv_transfer_params": {"remote_block_ids": [7]}})

        async def chunks() -> AsyncIterator[bytes]:
            for word in ("Hello", " from", " vLLM"):
                event = {"choices": [{"delta": {"content": word}}]}
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return http.StreamResponse(chunks(), content_type="text/event-stream")


def test_the_openai_adapter_runs_both_phases_on_the_server() -> None:
    async def main() -> None:
        fake = FakeOpenAI()
        server = http.Server({("POST", "/v1/chat/completions"): fake.handle})
        port = await server.listen("127.0.0.1", 0)
        graph = llm_graph(server={"url": f"http://127.0.0.1:{port}/v1", "model": "llama"})
        async with running(graph, PROFILES) as g:
            r = await g.invoke({"messages": [{"role": "user", "content": "hi"}]},
                               "/v1/chat/completions")
        await server.shutdown(0.1)
        assert r.status == 200, r.body
        assert r.json()["choices"][0]["message"]["content"] == "Hello from vLLM"
        prefill, decode = fake.seen
        assert (prefill["max_tokens"], prefill["stream"]) == (1, False)
        assert (decode["max_tokens"], decode["stream"]) == (8, True)
        assert decode["kv_transfer_params"] == {"remote_block_ids": [7]}
        assert decode["messages"][-1] == {"role": "user", "content": "hi"}
        assert decode["model"] == "llama"

    run(main)


def _worker(seconds: float = 0.2, batch: int = 1) -> Worker:
    graph = make_graph([tool("call", seconds)], sla=5)
    plan = solve.plan(graph, PROFILES)
    config = runtime_config.worker_config(graph, plan, plan.assignments[0],
                                          {p.name: p for p in PROFILES}, "t")
    config = config.model_copy(update={"batch": batch})
    return Worker(config, emulator.EmulatedStep(config))


def test_a_worker_refuses_what_it_cannot_do_and_says_why() -> None:
    async def main() -> None:
        worker = _worker()
        server = http.Server(worker.routes())
        url = f"http://127.0.0.1:{await server.listen('127.0.0.1', 0)}"
        client = http.Client()
        r = await client.post_json(url + "/v1/run", {"inputs": {}})
        assert r.status == 503 and (await client.request("GET", url + "/readyz")).status == 503
        await worker.start()
        assert (await client.request("GET", url + "/readyz")).status == 200
        r = await client.request("POST", url + "/v1/run", b"{not json")
        assert r.status == 400 and "bad request" in r.json()["error"]["reason"]
        r = await client.post_json(url + "/v1/run", {"inputs": {}}, {TIMEOUT_HEADER: "50"})
        assert r.status == 504  # 0.2 s of work, 50 ms left
        # One slot, four waiting places: the sixth request at once is refused, not queued.
        answers = await asyncio.gather(*(client.post_json(url + "/v1/run", {"inputs": {}})
                                         for _ in range(6)))
        assert sorted(a.status for a in answers) == [200] * 5 + [503]
        assert "overloaded" in next(a for a in answers if a.status == 503).json()[
            "error"]["reason"]
        worker.draining = True
        assert (await client.request("GET", url + "/readyz")).status == 503
        client.close()
        await server.shutdown(0.5)

    run(main)


def test_an_emulated_step_takes_the_cost_models_time() -> None:
    graph = make_graph([{"name": "hear", "kind": "speech-to-text",
                         "speechToText": {"parametersBillions": 0.244, "audioSeconds": 5}}],
                       sla=5)
    plan = solve.plan(graph, PROFILES)
    config = runtime_config.worker_config(graph, plan, plan.assignments[0],
                                          {p.name: p for p in PROFILES}, "t")
    found = emulator.estimate(config)
    assert found is not None and found.latency == pytest.approx(plan.assignments[0]
                                                                .latency_seconds)
    slow = config.model_copy(update={"slowdown": 2.0})
    assert emulator.seconds(slow) == pytest.approx(2 * found.latency)


def _pod(name: str, ip: str | None, ready: bool, step: str = "call", deleting: bool = False
         ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"agentgraph.dev/graph": "g",
                                                      "agentgraph.dev/step": step,
                                                      "agentgraph.dev/phase": "run",
                                                      "agentgraph.dev/pool": "epyc-9654"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready",
                                              "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_endpoints_are_the_ready_pods_and_the_pick_prefers_the_less_busy() -> None:
    graph = make_graph([tool("call", 0.1)], sla=2)
    executed = runtime_config.runtime_graph(graph, solve.plan(graph, PROFILES), "ns")
    endpoints = Endpoints(seed=3)
    pods = {p["metadata"]["name"]: p for p in (
        _pod("a", "127.1.0.1", True), _pod("b", "127.1.0.2", True),
        _pod("c", "127.1.0.3", False), _pod("d", None, True),
        _pod("e", "127.1.0.5", True, deleting=True), _pod("f", "127.1.0.6", True, step="x"))}
    endpoints.update(executed, pods)
    group = endpoints.by_phase[("call", "run")]
    assert [(e.pod, e.address, e.pool) for e in group] == [
        ("a", "127.1.0.1:8080", "epyc-9654"), ("b", "127.1.0.2:8080", "epyc-9654")]
    group[0].in_flight = 5
    assert {endpoints.pick("call", "run").pod for _ in range(20)} == {"b"}  # type: ignore[union-attr]
    endpoints.update(executed, pods)  # a pod that stays keeps its count
    assert endpoints.by_phase[("call", "run")][0].in_flight == 5
    assert endpoints.pick("call", "run", exclude=["a", "b"]) is None


def test_a_step_given_only_as_a_cost_table_is_emulated() -> None:
    """No workload to run, only measured times: its worker waits them (it crashed looking
    for the kind's block before)."""
    table = {"entries": [{"pool": "cpu", "latencySeconds": 0.2, "costPerRequest": 0.001}]}
    for kind in ("compute", "embedding", "vector-search"):
        graph = make_graph([{"name": "m", "kind": kind, "costModel": "table", "table": table}])
        assert steps.emulated(graph.spec.steps[0], emulate=False), kind
    real = make_graph([compute("c")]).spec.steps[0]
    assert not steps.emulated(real, emulate=False)
