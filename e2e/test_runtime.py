"""A placed graph answers requests: the operator's gateway and workers run (on the local cluster,
as processes on their pods' IPs), the embedding is the real model's, retrieval finds the nearest
documents, every step shows in the metrics, a failing step is named, a slow one ends at its
deadline, and a deleted pod's traffic moves to the other replicas."""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from builders import EXAMPLES_DIR
from conftest import (
    Kube,
    Operator,
    apply,
    gateway,
    host_address_for_pods,
    pods,
    reach,
    ready,
    wait_for,
)

WAIT_READY_S = 180.0
VOICE = yaml.safe_load((EXAMPLES_DIR / "voice-agent.yaml").read_text())
QUESTION = "Will it rain in Paris tomorrow?"


def post(url: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import re

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            out[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))] = \
                float(m.group(3))
    return out


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_the_voice_agent_answers_with_the_real_embedding_and_retrieval(
        kube: Kube, operator: Operator, namespace: str) -> None:
    apply(kube, namespace, VOICE)
    wait_for("voice-agent Ready", lambda: ready(kube, namespace, "voice-agent"), WAIT_READY_S)
    gw = gateway(kube, namespace, "voice-agent")
    with reach(kube, namespace, gw, 8080) as url:
        status, answer = post(f"{url}/v1/invoke?outputs=all", {"text": QUESTION})
        assert status == 200, answer
        outputs = answer["outputs"]
        vector = outputs["embed"]["vector"]
        assert len(vector) == 384 and abs(math.fsum(x * x for x in vector) - 1) < 1e-3
        from agentgraph.runtime.embedding import MiniLM  # the same model, in this process

        assert cosine(vector, [float(x) for x in MiniLM().embed([QUESTION])[0]]) > 0.999
        docs = outputs["retrieve"]["documents"]
        assert docs[0]["id"] == "weather-paris"  # from the shipped corpus
        visited = [(s["step"], s["phase"]) for s in answer["steps"]]
        assert visited[:3] == [("transcribe", "run"), ("embed", "run"), ("retrieve", "run")]
        assert ("reason", "prefill") in visited and ("reason", "decode") in visited
        assert visited[-1] == ("speak", "run") and "text" in outputs["speak"]
        status, chat = post(f"{url}/v1/chat/completions",
                            {"model": "voice-agent",
                             "messages": [{"role": "user", "content": QUESTION}]})
        assert status == 200, chat
        assert chat["choices"][0]["message"]["content"]
        seen = scrape(url.replace(":8080", ":9090"))
    for step, phase in set(visited):
        assert any(name == "agentgraph_step_duration_seconds_count"
                   and ("step", step) in labels and ("phase", phase) in labels and value >= 1
                   for (name, labels), value in seen.items()), (step, phase)
    assert seen[("agentgraph_requests_total", frozenset({("graph", "voice-agent"),
                                                         ("code", "200")}))] >= 2
    decode = pods(kube, namespace, "agentgraph.dev/step=reason,agentgraph.dev/phase=decode")[0]
    with reach(kube, namespace, decode, 9090) as url:
        worker = scrape(url)
    emulated = [labels for (name, labels), value in worker.items()
                if name == "agentgraph_worker_service_seconds_count" and value >= 1]
    assert emulated and all(("mode", "emulator") in labels for labels in emulated)


FANOUT = yaml.safe_load((EXAMPLES_DIR / "research-fanout.yaml").read_text())


def test_steps_on_a_shared_model_server_are_answered_by_its_pods(
        kube: Kube, operator: Operator, namespace: str) -> None:
    """The fan-out example: six summarisers on one 8B model get one Deployment per server
    (named after the first), not one each; a request visits every summariser's phases on the
    shared pods, and the shared worker counts each summariser under its own name."""
    apply(kube, namespace, {**FANOUT, "spec": {**FANOUT["spec"], "runtime": {"emulate": True}}})
    wait_for("research-fanout Ready", lambda: ready(kube, namespace, "research-fanout"),
             WAIT_READY_S)
    plan = kube.json("get", "agentgraph", "research-fanout", "-n", namespace)["status"]["plan"]
    served = [s for s in plan["steps"] if s.get("server")]
    summarisers = {f"summarise-{i}" for i in range(1, 7)}
    assert {s["step"] for s in served} >= summarisers
    leads = {(s["server"], s["phase"]) for s in served}
    deployments = {d["metadata"]["name"]: d for d in kube.json(
        "get", "deployments", "-n", namespace, "-l", "agentgraph.dev/graph=research-fanout")[
            "items"]}
    own = [s for s in plan["steps"] if not s.get("server")]
    assert len(deployments) == len(leads) + len(own) + 1  # and the gateway
    for step in served:
        if step["server"] != step["step"]:
            assert step["replicas"] == 0
            assert f"research-fanout-{step['step']}-{step['phase']}" not in deployments
    gw = gateway(kube, namespace, "research-fanout")
    with reach(kube, namespace, gw, 8080) as url:
        status, answer = post(f"{url}/v1/invoke", {"text": QUESTION}, timeout=60)
        assert status == 200, answer
    visited = {(s["step"], s["phase"]) for s in answer["steps"]}
    assert {(step, phase) for step in summarisers for phase in ("prefill", "decode")} <= visited
    lead = next(s for s in served if s["step"] == "summarise-1" and s["phase"] == "decode")
    decode = pods(kube, namespace, f"agentgraph.dev/graph=research-fanout,"
                                   f"agentgraph.dev/step={lead['server']},"
                                   "agentgraph.dev/phase=decode")[0]
    with reach(kube, namespace, decode, 9090) as url:
        worker = scrape(url)
    counted = {dict(labels)["step"] for (name, labels), value in worker.items()
               if name == "agentgraph_worker_service_seconds_count" and value >= 1}
    on_this = {s["step"] for s in served if s["server"] == lead["server"]
               and s["phase"] == "decode"}
    assert counted == on_this and "summarise-1" in counted


CORPUS = "\n".join(json.dumps(d) for d in [
    {"id": "paris", "text": "Paris tomorrow: rain in the morning, sun after lunch."},
    {"id": "refund", "text": "Refunds are paid within five business days."},
    {"id": "gpu", "text": "Decoding reads every weight of the model for each token."},
    {"id": "pasta", "text": "Cook pasta in plenty of salted boiling water."},
])


def test_a_rag_graph_finds_the_nearest_documents_in_its_corpus(
        kube: Kube, operator: Operator, namespace: str) -> None:
    corpus = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rag-corpus"},
              "data": {"corpus.jsonl": CORPUS}}
    graph = {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
             "metadata": {"name": "rag"},
             "spec": {"sla": {"latencySeconds": 2},
                      "steps": [
                          {"name": "embed", "kind": "embedding",
                           "embedding": {"parametersBillions": 0.0227, "tokens": 32}},
                          {"name": "retrieve", "kind": "vector-search", "dependsOn": ["embed"],
                           "vectorSearch": {"vectors": 4, "dimensions": 384,
                                            "scannedFraction": 1, "topK": 2,
                                            "corpus": {"name": "rag-corpus",
                                                       "key": "corpus.jsonl"}}}]}}
    apply(kube, namespace, corpus, graph)
    wait_for("rag Ready", lambda: ready(kube, namespace, "rag"), WAIT_READY_S)
    with reach(kube, namespace, gateway(kube, namespace, "rag"), 8080) as url:
        for question, nearest in ((QUESTION, "paris"), ("How do I get my money back?", "refund"),
                                  ("Why is token generation memory bound?", "gpu")):
            status, answer = post(f"{url}/v1/invoke", {"text": question})
            assert status == 200, answer
            documents = answer["outputs"]["retrieve"]["documents"]
            assert len(documents) == 2 and documents[0]["id"] == nearest, documents
            assert documents[0]["score"] > documents[1]["score"]


class ToolServer:
    """What a tool step calls: /ok answers, /fail answers 500, /slow takes 30 s."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/slow":
                    time.sleep(30)
                code = 500 if self.path == "/fail" else 200
                body = json.dumps({"error": "boom"} if code == 500 else {"ok": True}).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host_address_for_pods()}:{self.server.server_port}"


@pytest.fixture()
def tool_server() -> Iterator[ToolServer]:
    server = ToolServer()
    yield server
    server.server.shutdown()


def tool_graph(name: str, url: str, **runtime: Any) -> dict[str, Any]:
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"latencySeconds": 1}, "runtime": runtime,
                     "steps": [{"name": "prepare", "kind": "compute",
                                "compute": {"coreSeconds": 0.001}},
                               {"name": "lookup", "kind": "tool", "dependsOn": ["prepare"],
                                "tool": {"latencySeconds": 0.05, "url": url}}]}}


def test_a_failing_step_is_named_and_a_slow_one_ends_at_its_deadline(
        kube: Kube, operator: Operator, namespace: str, tool_server: ToolServer) -> None:
    apply(kube, namespace, tool_graph("fails", f"{tool_server.url}/fail"),
          tool_graph("slow", f"{tool_server.url}/slow", requestTimeoutSeconds=2))
    for name in ("fails", "slow"):
        wait_for(f"{name} Ready", lambda name=name: ready(kube, namespace, name), WAIT_READY_S)
    with reach(kube, namespace, gateway(kube, namespace, "fails"), 8080) as url:
        status, answer = post(f"{url}/v1/invoke", {"text": "x"})
    assert status == 502, answer
    error = answer["error"]
    assert (error["step"], error["cause"]) == ("lookup", "failed")
    assert "answered 500" in error["reason"] and "/fail" in error["reason"]
    with reach(kube, namespace, gateway(kube, namespace, "slow"), 8080) as url:
        started = time.monotonic()
        status, answer = post(f"{url}/v1/invoke", {"text": "x"})
        elapsed = time.monotonic() - started
    assert status == 504, answer
    assert (answer["error"]["step"], answer["error"]["cause"]) == ("lookup", "timeout")
    assert elapsed < 5, f"the request took {elapsed:.1f} s against a 2 s deadline"


def test_a_deleted_pods_traffic_moves_to_the_other_replicas(
        kube: Kube, operator: Operator, namespace: str) -> None:
    graph = {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
             "metadata": {"name": "spread"},
             "spec": {"sla": {"latencySeconds": 1, "targetRequestsPerSecond": 20},
                      "steps": [{"name": "call", "kind": "tool",
                                 "tool": {"latencySeconds": 0.05, "concurrency": 1}}]}}
    apply(kube, namespace, graph)
    wait_for("spread Ready", lambda: ready(kube, namespace, "spread"), WAIT_READY_S)
    replicas = pods(kube, namespace, "agentgraph.dev/graph=spread,agentgraph.dev/step=call")
    assert len(replicas) >= 2
    victim = replicas[0]["metadata"]["name"]
    results: list[tuple[float, int, list[str]]] = []
    deleted_at: list[float] = []
    with reach(kube, namespace, gateway(kube, namespace, "spread"), 8080) as url:
        stop = time.monotonic() + 8

        def send() -> None:
            while time.monotonic() < stop:
                status, answer = post(f"{url}/v1/invoke", {"n": len(results)}, timeout=10)
                used = [s["pod"] for s in answer.get("steps", [])]
                results.append((time.monotonic(), status, used))

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(2)
        kube("delete", "pod", victim, "-n", namespace, "--wait=false")
        deleted_at.append(time.monotonic())
        sender.join(20)
    failures = [(status, used) for _, status, used in results if status != 200]
    assert not failures, failures
    after = [used for at, _, used in results if at > deleted_at[0] + 2]
    assert after and all(victim not in used for used in after)
    before = {pod for at, _, used in results if at < deleted_at[0] for pod in used}
    assert victim in before  # it did take traffic before it went
