"""make demo: the voice agent on the local real cluster, planned and placed by the operator.

Assumes `make cluster` ran (the Makefile does that first). Installs the CRDs and the hardware
profiles, starts the operator in the background (stopped by `make cluster-down`), applies
examples/voice-agent.yaml, waits for Ready, and prints where every step runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster

NAMESPACE = "demo"
WAIT_READY_S = 180.0


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
    pods = json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-o", "json"))["items"]
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
                  f"SLA; ${plan['costPerHour']:.2f}/hour. Stop everything: make cluster-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
