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
REPLAN_PASSES = Counter("agentgraph_replan_passes", "Replanner passes, by outcome: replan "
                        "(learned something: a FULL reconcile follows), kept, no-metrics",
                        ["outcome"])
REPLAN_SECONDS = Histogram("agentgraph_replan_pass_seconds", "Time per replanner pass (queries "
                           "and decision)", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
MEASURED = Gauge("agentgraph_graph_measured_latency_seconds", "Measured end-to-end latency of "
                 "a graph at its SLA percentile", ["namespace", "graph"])
PER_GRAPH = (COST, LATENCY, READY, FEASIBLE, MEASURED)


def record_graph(namespace: str, graph: str, status: dict[str, object]) -> None:
    plan = status.get("plan")
    READY.labels(namespace, graph).set(1 if condition_status(status, "Ready") == "True" else 0)
    FEASIBLE.labels(namespace, graph).set(
        1 if condition_status(status, "Planned") == "True" else 0)
    seen = status.get("observed")
    if isinstance(seen, dict) and isinstance(seen.get("latencySeconds"), (int, float)):
        MEASURED.labels(namespace, graph).set(float(seen["latencySeconds"]))
    if isinstance(plan, dict):
        if isinstance(plan.get("costPerHour"), (int, float)):
            COST.labels(namespace, graph).set(float(plan["costPerHour"]))
        if isinstance(plan.get("latencySeconds"), (int, float)):
            LATENCY.labels(namespace, graph).set(float(plan["latencySeconds"]))


def forget_graph(namespace: str, graph: str) -> None:
    for gauge in PER_GRAPH:
        with contextlib.suppress(KeyError):  # never recorded
            gauge.remove(namespace, graph)
