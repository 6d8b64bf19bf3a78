"""Prometheus metrics of the operator itself, served on /metrics (the chart's ServiceMonitor
scrapes them). Per-graph gauges are the plan's predictions; measured latency comes with
replanning from Prometheus."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from agentgraph.controller.status import condition_status

RECONCILES = Counter("agentgraph_reconciles", "Reconciles run, by level and outcome",
                     ["level", "outcome"])
RECONCILE_SECONDS = Histogram("agentgraph_reconcile_seconds", "Time per reconcile, by level",
                              ["level"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CHILD_WRITES = Counter("agentgraph_child_writes", "Deployments/Services applied or deleted",
                       ["verb"])
COST = Gauge("agentgraph_plan_cost_per_hour", "Planned $/hour of a graph",
             ["namespace", "graph"])
LATENCY = Gauge("agentgraph_plan_latency_seconds", "Predicted end-to-end latency of a graph",
                ["namespace", "graph"])
READY = Gauge("agentgraph_graph_ready", "1 when every step of the graph has all its replicas",
              ["namespace", "graph"])
FEASIBLE = Gauge("agentgraph_graph_feasible", "1 when the graph has a plan meeting its spec",
                 ["namespace", "graph"])
PER_GRAPH = (COST, LATENCY, READY, FEASIBLE)


def record_graph(namespace: str, graph: str, status: dict[str, object]) -> None:
    plan = status.get("plan")
    READY.labels(namespace, graph).set(1 if condition_status(status, "Ready") == "True" else 0)
    FEASIBLE.labels(namespace, graph).set(
        1 if condition_status(status, "Planned") == "True" else 0)
    if isinstance(plan, dict):
        if isinstance(plan.get("costPerHour"), (int, float)):
            COST.labels(namespace, graph).set(float(plan["costPerHour"]))
        if isinstance(plan.get("latencySeconds"), (int, float)):
            LATENCY.labels(namespace, graph).set(float(plan["latencySeconds"]))


def forget_graph(namespace: str, graph: str) -> None:
    for gauge in PER_GRAPH:
        with contextlib.suppress(KeyError):  # never recorded
            gauge.remove(namespace, graph)
