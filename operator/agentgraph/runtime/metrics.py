"""Prometheus metrics of the gateway and the workers (one registry per process).

Labels: graph, step, phase, pool; ``mode`` says whether a worker ran the real thing ("real") or
emulated it from its pool's cost model ("emulator"), so an emulated figure is never mistaken for
a measured one. The gateway's end-to-end buckets sit around the SLA; per-step buckets span
1 ms to 60 s. Means (``_sum / _count``) are exact and are what the replanner compares with the
planner's predictions.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agentgraph.runtime import http

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                 0.075, 0.1, 0.25, 0.5, 1.0)
SLA_MULTIPLES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
STEP = ("graph", "step", "phase", "pool")
# The *_created series double what is scraped, and nothing reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def sla_buckets(sla_seconds: float) -> tuple[float, ...]:
    return tuple(round(sla_seconds * m, 6) for m in SLA_MULTIPLES)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = (*STEP, "mode")
        self.duration = Histogram(
            "agentgraph_worker_duration_seconds", "Time a request spent in this worker, from "
            "arrival to answer (queueing included)", labels, registry=r, buckets=STEP_BUCKETS)
        self.service = Histogram(
            "agentgraph_worker_service_seconds", "Time a request was worked on, once it had a "
            "slot (what the cost model predicts)", labels, registry=r, buckets=STEP_BUCKETS)
        self.queue = Histogram(
            "agentgraph_worker_queue_seconds", "Time a request waited for a free slot",
            labels, registry=r, buckets=STEP_BUCKETS)
        self.requests = Counter("agentgraph_worker_requests", "Requests answered, by code",
                                (*labels, "code"), registry=r)
        self.in_flight = Gauge("agentgraph_worker_in_flight", "Requests in this worker now",
                               labels, registry=r)
        self.ttft = Histogram("agentgraph_llm_ttft_seconds", "Decode: arrival to first token "
                              "(KV fetch included)", labels, registry=r, buckets=STEP_BUCKETS)
        self.tbt = Histogram("agentgraph_llm_tbt_seconds", "Decode: time between tokens",
                             labels, registry=r, buckets=TOKEN_BUCKETS)
        self.predicted = Gauge("agentgraph_worker_predicted_seconds", "The planner's "
                               "prediction for one visit of this step phase (a decode's KV "
                               "hand-off from another pool included)", labels, registry=r)


class GatewayMetrics:
    def __init__(self, sla_seconds: float) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("agentgraph_requests", "Requests through the gateway, by HTTP "
                                "code", ("graph", "code"), registry=r)
        self.duration = Histogram(
            "agentgraph_request_duration_seconds", "End-to-end latency through the graph",
            ("graph", "outcome"), registry=r, buckets=sla_buckets(sla_seconds))
        self.in_flight = Gauge("agentgraph_requests_in_flight", "Requests in the gateway now",
                               ("graph",), registry=r)
        self.step = Histogram(
            "agentgraph_step_duration_seconds", "One call of a step phase as the gateway sees "
            "it (network and queueing included)", STEP, registry=r, buckets=STEP_BUCKETS)
        self.errors = Counter("agentgraph_step_errors", "Failed step calls, by reason",
                              (*STEP, "reason"), registry=r)
        self.ttft = Histogram("agentgraph_gateway_ttft_seconds", "LLM step: prefill start to "
                              "first token", ("graph", "step"), registry=r,
                              buckets=STEP_BUCKETS)
        self.tbt = Histogram("agentgraph_gateway_tbt_seconds", "LLM step: time between "
                             "tokens as streamed", ("graph", "step"), registry=r,
                             buckets=TOKEN_BUCKETS)
        self.sla = Gauge("agentgraph_sla_seconds", "The graph's end-to-end SLA", ("graph",),
                         registry=r)
        self.endpoints = Gauge("agentgraph_ready_endpoints", "Ready pods per step phase",
                               ("graph", "step", "phase"), registry=r)


def handler(registry: CollectorRegistry) -> http.Handler:
    async def metrics(_: http.Request) -> http.Response:
        return http.Response(200, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return metrics
