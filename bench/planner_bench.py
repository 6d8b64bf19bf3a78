"""Planner solve time on generated graphs of 10, 100 and 500 steps over 12 pools.

Pools: the 11 shipped profiles plus a rented H100 pool (the paper's $/hour), so one device type
sits in two pools at different prices. Graphs: a seeded random DAG mixing every step kind, about
one step in five an LLM (Llama-3 8B or 70B, the paper's interactive TTFT/TBT), a few bounded
loops, 10 requests/s, and an end-to-end SLA at a multiple of the fastest plan's latency: 1.5x
(the SLA binds hard: the hard case for the MILP) and 3x (a looser SLA).

Prints a table and writes JSON. Median of several runs per size; targets from the issue:
100 steps under 1 s, 500 steps under 10 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agentgraph import cli
from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile
from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates, diagnose, solve
from agentgraph.planner import graph as graph_model
from agentgraph.planner.evaluate import evaluate
from agentgraph.planner.snapshot import ClusterSnapshot

ROOT = Path(__file__).resolve().parent.parent
SIZES = {10: 7, 100: 5, 500: 3}  # steps -> runs
SLA_FACTORS = (1.5, 3.0)  # SLA as a multiple of the fastest plan's latency
TARGETS = {100: 1.0, 500: 10.0}
TIME_LIMIT = 60.0  # the planner's default
MODELS = [
    {"parametersBillions": 8.03, "layers": 32, "hiddenSize": 4096, "heads": 32, "kvHeads": 8},
    {"parametersBillions": 70.6, "layers": 80, "hiddenSize": 8192, "heads": 64, "kvHeads": 8},
]


def pools() -> list[HardwareProfile]:
    out = cli.load_profiles(str(ROOT / "hardware_profiles"))
    h100 = next(p for p in out if p.name == "h100").model_dump(by_alias=True)
    h100["metadata"]["name"] = "h100-rented"
    h100["spec"]["cost"]["basis"] = "hourly"
    h100["spec"]["pool"]["nodeSelector"] = {"agentgraph.dev/pool": "h100-rented"}
    out.append(HardwareProfile.model_validate(h100))
    return out


def step(rng: random.Random, name: str, deps: list[str]) -> dict[str, Any]:
    kind = rng.choices(["llm", "embedding", "vector-search", "tool", "compute",
                        "speech-to-text", "text-to-speech"], [20, 12, 10, 25, 15, 9, 9])[0]
    s: dict[str, Any] = {"name": name, "kind": kind, "dependsOn": deps}
    if kind == "llm":
        s["llm"] = {"model": {**rng.choice(MODELS), "dtypeBytes": rng.choice([1, 2])},
                    "inputTokens": rng.choice([512, 1024, 2048, 4096]),
                    "outputTokens": rng.choice([32, 64, 128, 256])}
    elif kind == "embedding":
        s["embedding"] = {"parametersBillions": 0.335, "tokens": rng.choice([64, 256, 512])}
    elif kind == "vector-search":
        s["vectorSearch"] = {"vectors": rng.choice([10**6, 10**7]), "dimensions": 768,
                             "accelerated": rng.random() < 0.5}
    elif kind == "tool":
        s["tool"] = {"latencySeconds": rng.choice([0.05, 0.2, 0.5])}
    elif kind == "compute":
        s["compute"] = {"coreSeconds": rng.choice([0.05, 0.5, 2.0]), "maxCores": 8}
    else:
        key = "speechToText" if kind == "speech-to-text" else "textToSpeech"
        s[key] = {"parametersBillions": rng.choice([0.082, 0.244, 0.8]), "audioSeconds": 6}
    return s


def generated(n: int, seed: int, profiles: list[HardwareProfile],
              sla_factor: float = 1.5) -> AgentGraph:
    rng = random.Random(seed)
    steps: list[dict[str, Any]] = []
    loops = []
    for i in range(n):
        window = [s["name"] for s in steps[-8:]]
        deps = rng.sample(window, k=min(len(window), rng.choice([1, 1, 2]))) if window else []
        steps.append(step(rng, f"s{i:03d}", deps))
        if i % 25 == 24 and steps[-1]["kind"] != "llm":  # a bounded self-loop now and then
            steps[-1]["dependsOn"].append(steps[-1]["name"])
            loops.append({"steps": [steps[-1]["name"]], "expectedIterations": 2,
                          "maxIterations": 4})
    spec: dict[str, Any] = {"steps": steps, "loops": loops,
                            "sla": {"latencySeconds": 1e6, "ttftSeconds": 0.5,
                                    "tbtSeconds": 0.05, "targetRequestsPerSecond": 10}}
    graph = AgentGraph.model_validate({"metadata": {"name": f"bench-{n}"}, "spec": spec})
    # SLA at a multiple of the fastest reachable latency.
    model = graph_model.build(graph)
    settings = CostSettings()
    snapshot = ClusterSnapshot.from_profiles(profiles, settings)
    options = candidates.build(model, snapshot, settings)
    fastest = evaluate(model, options, diagnose.fastest_selection(options), snapshot).latency
    spec["sla"]["latencySeconds"] = round(sla_factor * fastest, 3)
    return AgentGraph.model_validate({"metadata": {"name": f"bench-{n}"}, "spec": spec})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench/results/planner.json")
    args = ap.parse_args()
    profiles = pools()
    rows = []
    for (n, runs), factor in itertools.product(SIZES.items(), SLA_FACTORS):
        graph = generated(n, seed=n, profiles=profiles, sla_factor=factor)
        totals, solves, objective, variables, status = [], [], None, 0, "?"
        for _ in range(runs):
            started = time.perf_counter()
            plan = solve.plan(graph, profiles, time_limit=TIME_LIMIT)
            totals.append(time.perf_counter() - started)
            solves.append(plan.solve_seconds or 0.0)
            if not plan.feasible:
                print(f"{n} steps: infeasible: {plan.reasons}", file=sys.stderr)
                return 1
            objective = plan.objective.value if plan.objective else None
            status = plan.solver_status or "?"
            variables = len(plan.assignments)
        rows.append({
            "steps": n, "sla_factor": factor, "pools": len(profiles), "runs": runs,
            "median_total_s": statistics.median(totals),
            "median_milp_s": statistics.median(solves),
            "min_total_s": min(totals), "max_total_s": max(totals),
            "objective_usd_per_hour": objective, "assignments": variables,
            "target_s": TARGETS.get(n), "solver_status": status,
            "time_limit_s": TIME_LIMIT,
        })
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table("steps", "SLA x fastest", "pools", "runs", "median total s", "median MILP s",
                  "min s", "max s", "target s", "$/hour", "solver", title="planner solve time")
    for r in rows:
        table.add_row(str(r["steps"]), f"{r['sla_factor']:g}", str(r["pools"]), str(r["runs"]),
                      f"{r['median_total_s']:.3f}", f"{r['median_milp_s']:.3f}",
                      f"{r['min_total_s']:.3f}", f"{r['max_total_s']:.3f}",
                      "-" if r["target_s"] is None else f"< {r['target_s']:g}",
                      f"{r['objective_usd_per_hour']:.2f}", r["solver_status"][:24])
    Console(width=140).print(table)
    print(f"peak RSS {peak_rss_mb:.0f} MB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": len(__import__("os").sched_getaffinity(0)),
                                           "python": platform.python_version()},
                               "peak_rss_mb": peak_rss_mb, "results": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
