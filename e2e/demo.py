"""make demo: the voice agent on the local real cluster, planned, placed and running.

Assumes `make cluster` ran (the Makefile does that first). Installs the CRDs and the hardware
profiles, starts the operator in the background (stopped by `make cluster-down`), applies
examples/voice-agent.yaml, waits for Ready, prints where every step runs, then sends requests
through the graph's gateway and prints, per step, the predicted and the measured latency and
the end-to-end p50/p95 against the SLA.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster

NAMESPACE = "demo"
WAIT_READY_S = 180.0
RATE, SECONDS = 2.0, 20.0  # the demo's load: 40 requests, a few in flight at a time


def kubectl(*args: str) -> str:
    return cluster.kubectl("--cache-dir", str(cluster.STATE / "kubectl-cache"), *args)


def ready() -> bool:
    obj = json.loads(kubectl("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n",
                             NAMESPACE, "-o", "json"))
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))


def main() -> int:
    root = cluster.ROOT
    for folder in ("crds", "hardware_profiles"):
        kubectl("apply", "--server-side", "--field-manager=agentgraph-demo", "-f",
                str(root / folder))
    kubectl("wait", "--for=condition=Established", "crd/agentgraphs.agentgraph.dev",
            "--timeout=30s")
    cluster.start_operator()
    subprocess.run([str(cluster.BIN / "kubectl"), f"--kubeconfig={cluster.KUBECONFIG}",
                    "create", "namespace", NAMESPACE], capture_output=True, check=False)
    kubectl("apply", "-n", NAMESPACE, "--server-side", "--field-manager=agentgraph-demo", "-f",
            str(root / "examples" / "voice-agent.yaml"))
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > WAIT_READY_S:
            print(kubectl("get", "agentgraphs.agentgraph.dev", "-n", NAMESPACE, "-o", "yaml"))
            raise SystemExit(f"demo: voice-agent not Ready after {WAIT_READY_S:.0f} s; "
                             f"operator log: {cluster.LOGS / 'operator.log'}")
        time.sleep(1)
    elapsed = time.monotonic() - started
    console = Console(width=140)
    console.print(f"\n[bold]voice-agent is Ready[/] {elapsed:.1f} s after kubectl apply\n")
    console.print(f"$ kubectl get agentgraphs -n {NAMESPACE}")
    console.print(kubectl("get", "agentgraphs.agentgraph.dev", "-n", NAMESPACE))
    obj = json.loads(kubectl("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n",
                             NAMESPACE, "-o", "json"))
    pods = json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-l",
                              "agentgraph.dev/component=worker", "-o", "json"))["items"]
    nodes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pod in pods:
        labels: dict[str, Any] = pod["metadata"]["labels"]
        nodes[(labels["agentgraph.dev/step"], labels["agentgraph.dev/phase"])].add(
            pod["spec"].get("nodeName") or "(pending)")
    plan = obj["status"]["plan"]
    table = Table("step", "phase", "pool", "node(s)", "TP", "replicas", "latency s", "$/hour",
                  title="where every step runs")
    for s in plan["steps"]:
        phase = s.get("phase", "run")
        table.add_row(s["step"], "" if phase == "run" else phase, s["pool"],
                      ", ".join(sorted(nodes[(s["step"], phase)])), str(s["tensorParallel"]),
                      str(s["replicas"]), f"{s['latencySeconds']:.3f}",
                      f"{s.get('costPerHour', 0):.2f}")
    console.print(table)
    console.print(f"predicted latency {plan['latencySeconds']:.2f} s of {plan['slaSeconds']} s "
                  f"SLA; ${plan['costPerHour']:.2f}/hour.")
    send_requests(console, plan)
    console.print("Stop everything: make cluster-down")
    return 0


def _gateway_ip() -> str:
    pods = json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-l",
                              "agentgraph.dev/component=gateway", "-o", "json"))["items"]
    ready = [p["status"]["podIP"] for p in pods if any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])]
    if not ready:
        raise SystemExit("demo: the gateway has no Ready pod")
    return str(ready[0])


def _means(url: str) -> dict[tuple[str, str], float]:
    """Mean seconds per (step, phase) from the gateway's step histograms."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in text.splitlines():
        m = re.match(r'^agentgraph_step_duration_seconds_(sum|count)\{(.*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            sums[(labels["step"], labels["phase"])][m.group(1) == "count"] += float(m.group(3))
    return {k: s / c for k, (s, c) in sums.items() if c}


def send_requests(console: Console, plan: dict[str, Any]) -> None:
    from agentgraph.api.graph import AgentGraph
    from agentgraph.runtime import http, loadgen, steps

    ip = _gateway_ip()
    url = f"http://{ip}:8080/v1/invoke"
    console.print(f"\n$ agentgraph loadgen {url} --rate {RATE:g} --duration {SECONDS:g}")
    report = http.run(lambda: loadgen.run(url, {"text": "Will it rain in Paris tomorrow?"},
                                          [loadgen.Stage(RATE, SECONDS)]))
    console.print(loadgen.format_table(report))
    runtime = json.loads(json.loads(kubectl("get", "configmap", "voice-agent-runtime", "-n",
                                            NAMESPACE, "-o", "json"))["data"]["graph.json"])
    measured = _means(f"http://{ip}:9090")
    table = Table("step", "phase", "pool", "predicted s", "measured s", "Δ", "how",
                  title="per step: the planner's prediction and what the gateway measured")
    graph = AgentGraph.model_validate(
        {k: v for k, v in json.loads(kubectl("get", "agentgraphs.agentgraph.dev",
                                             "voice-agent", "-n", NAMESPACE, "-o", "json")
                                     ).items() if k != "status"})
    specs = {s.name: s for s in graph.spec.steps}
    for step in runtime["steps"]:
        for phase in step["phases"]:
            seen = measured.get((step["name"], phase["phase"]))
            predicted = phase["predictedSeconds"]
            table.add_row(step["name"], "" if phase["phase"] == "run" else phase["phase"],
                          phase["pool"], f"{predicted:.4f}",
                          "-" if seen is None else f"{seen:.4f}",
                          "-" if seen is None else f"{seen / predicted - 1:+.0%}",
                          "emulated" if steps.emulated(specs[step["name"]],
                                                       graph.spec.runtime.emulate) else "real")
    console.print(table)
    ok = [s.latency for s in report.samples if s.status == 200]
    p50, p95 = loadgen.percentile(ok, 50), loadgen.percentile(ok, 95)
    sla = plan["slaSeconds"]
    verdict = "[green]met[/]" if p95 <= sla else "[red]missed[/]"
    console.print(f"end to end: p50 {p50:.2f} s, p95 {p95:.2f} s against the {sla} s SLA "
                  f"(p95): {verdict}; {len(ok)}/{len(report.samples)} answered")


if __name__ == "__main__":
    sys.exit(main())
