"""The operator on the local real cluster: kubectl apply -> Ready, one graph and many at once.

1. One 10-step graph (speech, embedding, retrieval, two Llama-3-8B calls, a tool, CPU work,
   speech out), applied with kubectl and timed to Planned and to Ready, several runs.
2. N small graphs (default 200; 3 tools and a compute step each, all on CPU pools) applied at
   once by 8 kubectl processes, timed until every one is admitted or told to wait (admission
   throughput; and per graph, creation to decision) and until every one is Ready or waiting
   with a reason; moves of a step to another pool after creation are counted (Replanned
   events that moved something).
3. The operator's resident memory (VmRSS, and its peak VmHWM) with the N graphs running.

Starts the local cluster when it is not running (and stops it afterwards), runs its own
operator process, and cleans up its namespaces. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))
import cluster  # noqa: E402

LIVENESS = "http://127.0.0.1:18095/healthz"
CLIENTS = 8  # kubectl processes applying the many graphs at once
WAIT_S = 600.0
LLAMA3_8B = {"name": "meta-llama/Meta-Llama-3-8B-Instruct", "parametersBillions": 8.03,
             "layers": 32, "hiddenSize": 4096, "heads": 32, "kvHeads": 8, "dtypeBytes": 2}


def ten_steps(name: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"name": "transcribe", "kind": "speech-to-text",
         "speechToText": {"parametersBillions": 0.244, "audioSeconds": 5}},
        {"name": "embed", "kind": "embedding", "dependsOn": ["transcribe"],
         "embedding": {"parametersBillions": 0.335, "tokens": 64}},
        {"name": "retrieve", "kind": "vector-search", "dependsOn": ["embed"],
         "vectorSearch": {"vectors": 1000000, "dimensions": 1024, "scannedFraction": 0.01}},
        {"name": "rerank", "kind": "compute", "dependsOn": ["retrieve"],
         "compute": {"coreSeconds": 0.2, "maxCores": 8}},
        {"name": "plan", "kind": "llm", "dependsOn": ["rerank"],
         "llm": {"model": LLAMA3_8B, "inputTokens": 1024, "outputTokens": 64}},
        {"name": "search", "kind": "tool", "dependsOn": ["plan"],
         "tool": {"latencySeconds": 0.4, "cpuCores": 0.25, "concurrency": 16}},
        {"name": "parse", "kind": "compute", "dependsOn": ["search"],
         "compute": {"coreSeconds": 0.1, "maxCores": 4}},
        {"name": "answer", "kind": "llm", "dependsOn": ["parse"],
         "llm": {"model": LLAMA3_8B, "inputTokens": 2048, "outputTokens": 128}},
        {"name": "check", "kind": "tool", "dependsOn": ["answer"],
         "tool": {"latencySeconds": 0.1, "cpuCores": 0.25, "concurrency": 16}},
        {"name": "speak", "kind": "text-to-speech", "dependsOn": ["check"],
         "textToSpeech": {"parametersBillions": 0.082, "audioSeconds": 8}},
    ]
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"latencySeconds": 10.0, "targetRequestsPerSecond": 2},
                     "steps": steps}}


def small(name: str) -> dict[str, Any]:
    steps = [
        {"name": "fetch", "kind": "tool",
         "tool": {"latencySeconds": 0.2, "cpuCores": 0.25, "concurrency": 8}},
        {"name": "score", "kind": "compute", "dependsOn": ["fetch"],
         "compute": {"coreSeconds": 0.1, "maxCores": 2}},
        {"name": "lookup", "kind": "tool", "dependsOn": ["fetch"],
         "tool": {"latencySeconds": 0.1, "cpuCores": 0.25, "concurrency": 8}},
        {"name": "reply", "kind": "tool", "dependsOn": ["score", "lookup"],
         "tool": {"latencySeconds": 0.1, "cpuCores": 0.25, "concurrency": 8}},
    ]
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"latencySeconds": 2.0, "targetRequestsPerSecond": 1},
                     "steps": steps}}


def kubectl(*args: str, stdin: str | None = None) -> str:
    return cluster.kubectl("--cache-dir", str(cluster.STATE / "kubectl-cache"), *args,
                           stdin=stdin)


def conditions(namespace: str) -> dict[str, dict[str, str]]:
    """Per graph in the namespace: condition type -> status."""
    listed = json.loads(kubectl("get", "agentgraphs.agentgraph.dev", "-n", namespace,
                                "-o", "json"))
    return {g["metadata"]["name"]: {c["type"]: c["status"]
                                    for c in g.get("status", {}).get("conditions", [])}
            for g in listed["items"]}


def decision_lag(namespace: str) -> list[float]:
    """Per graph, seconds from its creation to its admission decision (whole seconds: the API
    server's timestamps have no more)."""
    listed = json.loads(kubectl("get", "agentgraphs.agentgraph.dev", "-n", namespace,
                                "-o", "json"))["items"]
    out = []
    for g in listed:
        admitted = next((c for c in g.get("status", {}).get("conditions", [])
                         if c["type"] == "Admitted"), None)
        if admitted is None:
            continue
        created = datetime.fromisoformat(g["metadata"]["creationTimestamp"])
        out.append((datetime.fromisoformat(admitted["lastTransitionTime"]) - created)
                   .total_seconds())
    return out


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def install() -> None:
    """The CRDs and the shipped profiles (a cluster this bench started has neither)."""
    for folder in ("crds", "hardware_profiles"):
        kubectl("apply", "--server-side", "--field-manager=bench", "-f", str(ROOT / folder))
    kubectl("wait", "--for=condition=Established", "crd/agentgraphs.agentgraph.dev",
            "--timeout=30s")


def start_operator(log: Path, config: Path | None = None) -> subprocess.Popen[bytes]:
    cluster.stop_operator()  # the demo's, if it runs: one leader, and it must be ours
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentgraph.controller", "--liveness", LIVENESS,
         "--metrics-port", "0", *(["--config", str(config)] if config else [])],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(cluster.KUBECONFIG)}, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(LIVENESS, timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"operator bench: the operator did not come up; see {log}")


def fresh_namespace(name: str) -> None:
    """Its pods are marked Ready without processes (the pod runner's ready-only mode): this
    measures the operator; bench/runtime_bench.py measures the running graph."""
    kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=120s")
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "agentgraph.dev/pod-runner=ready-only")


def wait(what: str, check: Any, since: float) -> float:
    while not check():
        if time.monotonic() - since > WAIT_S:
            raise SystemExit(f"operator bench: timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - since


def one_graph(runs: int) -> dict[str, Any]:
    namespace = "bench-one"
    fresh_namespace(namespace)
    planned, ready = [], []
    doc = yaml.safe_dump(ten_steps("ten-steps"))
    for _ in range(runs):
        t0 = time.monotonic()
        kubectl("apply", "-n", namespace, "--server-side", "--field-manager=bench", "-f", "-",
                stdin=doc)
        planned.append(wait("Planned", lambda: conditions(namespace).get(
            "ten-steps", {}).get("Planned") == "True", t0))
        ready.append(wait("Ready", lambda: conditions(namespace).get(
            "ten-steps", {}).get("Ready") == "True", t0))
        kubectl("delete", "agentgraphs.agentgraph.dev", "ten-steps", "-n", namespace,
                "--wait=true")
        wait("children collected", lambda: not json.loads(kubectl(
            "get", "deployments", "-n", namespace, "-o", "json"))["items"], time.monotonic())
    kubectl("delete", "namespace", namespace, "--wait=false")
    return {"runs": runs, "planned_s": planned, "ready_s": ready,
            "planned_median_s": statistics.median(planned),
            "ready_median_s": statistics.median(ready)}


def many_graphs(count: int, operator: subprocess.Popen[bytes]) -> dict[str, Any]:
    namespace = "bench-many"
    fresh_namespace(namespace)
    # Many teams at once: CLIENTS kubectl processes, each applying its share.
    shares = ["\n---\n".join(yaml.safe_dump(small(f"g-{i:03d}"))
                               for i in range(c, count, CLIENTS)) for c in range(CLIENTS)]
    before = memory_kib(operator.pid)
    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda docs: kubectl("apply", "-n", namespace, "--server-side",
                                           "--field-manager=bench", "-f", "-", stdin=docs),
                      shares))
    applied = time.monotonic() - t0
    all_decided = None
    while True:
        seen = conditions(namespace)
        # decided: admitted (its hold recorded, Admitted=True: its children come next) or told
        # to wait (Admitted=False) with a reason
        decided = sum(c.get("Admitted") in ("True", "False") for c in seen.values())
        if all_decided is None and decided == count:
            all_decided = time.monotonic() - t0
        settled = sum(c.get("Ready") == "True" or c.get("Admitted") == "False"
                      for c in seen.values())
        if settled == count:
            all_settled = time.monotonic() - t0
            break
        if time.monotonic() - t0 > WAIT_S:
            raise SystemExit(f"operator bench: {count - settled} of {count} graphs neither "
                             f"Ready nor told to wait after {WAIT_S:.0f} s")
        time.sleep(0.5)
    time.sleep(5)  # let the trailing readiness events settle before reading memory
    after = memory_kib(operator.pid)
    final = conditions(namespace)
    lags = sorted(decision_lag(namespace))
    pods = len(json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"])
    events = json.loads(kubectl("get", "events", "-n", namespace, "--field-selector",
                                "reason=Replanned", "-o", "json"))["items"]
    moves = sum("moved" in e.get("message", "") for e in events)
    kubectl("delete", "namespace", namespace, "--wait=false")
    return {"graphs": count, "pods": pods, "kubectl_apply_s": applied,
            "all_decided_s": all_decided, "all_settled_s": all_settled,
            "ready": sum(c.get("Ready") == "True" for c in final.values()),
            "waiting": sum(c.get("Admitted") == "False" for c in final.values()),
            "moves": moves, "admitted_per_second": count / (all_decided or all_settled),
            "decision_lag_p50_s": statistics.median(lags) if lags else None,
            "decision_lag_max_s": lags[-1] if lags else None,
            "rss_before_mib": before["VmRSS"] / 1024, "rss_mib": after["VmRSS"] / 1024,
            "peak_rss_mib": after["VmHWM"] / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="bench/results/operator.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ours = cluster.status() != 0
    if ours:
        cluster.up()
    operator = None
    try:
        install()
        for namespace in ("bench-one", "bench-many"):  # an earlier run's, still going away
            kubectl("delete", "namespace", namespace, "--ignore-not-found", "--timeout=180s")
        operator = start_operator(out.with_suffix(".operator.log"))
        one = one_graph(args.runs)
        many = many_graphs(args.graphs, operator)
    finally:
        for namespace in ("bench-one", "bench-many"):  # a failed run leaves nothing behind
            cluster.run([str(cluster.BIN / "kubectl"), f"--kubeconfig={cluster.KUBECONFIG}",
                         "delete", "namespace", namespace, "--ignore-not-found",
                         "--wait=false"], capture_output=True)
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(timeout=30)
        if ours:
            cluster.down()
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "one_graph": one, "many_graphs": many}
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("measure", "value", title=f"operator on the local cluster ({os.cpu_count()} "
                  "cores, kwok nodes)")
    table.add_row("10-step graph: apply -> Planned (median)",
                  f"{one['planned_median_s']:.2f} s")
    table.add_row(f"10-step graph: apply -> Ready (median of {one['runs']})",
                  f"{one['ready_median_s']:.2f} s")
    table.add_row(f"{many['graphs']} graphs ({many['pods']} pods) at once: every one admitted "
                  "or told to wait", f"{many['all_decided_s']:.1f} s")
    table.add_row(f"{many['graphs']} graphs at once: every one Ready or waiting (target < 120 s)",
                  f"{many['all_settled_s']:.1f} s ({many['ready']} Ready, "
                  f"{many['waiting']} waiting)")
    table.add_row("admission throughput, graphs/s (target >= 10)",
                  f"{many['admitted_per_second']:.1f}")
    table.add_row("a graph's creation -> its admission decision, median / worst",
                  f"{many['decision_lag_p50_s']:.0f} s / {many['decision_lag_max_s']:.0f} s")
    table.add_row("step phases moved to another pool after creation (target 0)",
                  str(many["moves"]))
    table.add_row("operator RSS, idle -> with the graphs",
                  f"{many['rss_before_mib']:.0f} -> {many['rss_mib']:.0f} MiB "
                  f"(peak {many['peak_rss_mib']:.0f})")
    Console(width=120).print(table)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
