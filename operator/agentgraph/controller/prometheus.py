"""Measurements of one running graph, read from Prometheus's HTTP API (instant queries).

What the gateway and the workers export (runtime/metrics.py), as scraped with the pod's
namespace as the ``namespace`` label (our local cluster's scrape config, a kube-prometheus
PodMonitor and the usual annotation-based configs all add it):
  requests/s         sum(rate(agentgraph_requests_total[w]))
  latency            histogram_quantile(p, agentgraph_request_duration_seconds_bucket[w])
  per step phase     the workers' mean service time, calls, and the prediction they run with
  freshness          the gateway's agentgraph_sla_seconds series exists: it is being scraped
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agentgraph.planner.replan import Measurement, SlotMeasure

TIMEOUT_S = 5.0


class Unavailable(Exception):
    """No fresh measurement: ``reason`` is PrometheusUnreachable or NoSamples."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Prometheus:
    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector; Unavailable when Prometheus cannot answer."""
        target = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(target, timeout=self.timeout) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise Unavailable("PrometheusUnreachable",
                              f"{self.url} answered {e.code} to a query: {e.reason}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable("PrometheusUnreachable", f"{self.url}: {reason}") from e
        if body.get("status") != "success":
            raise Unavailable("PrometheusUnreachable",
                              f"{self.url}: query failed: {body.get('error', body)}")
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def measure(self, namespace: str, graph: str, percentile: float, window_seconds: float
                ) -> Measurement:
        w = f"{int(window_seconds)}s"
        sel = f'namespace="{_quote(namespace)}",graph="{_quote(graph)}"'
        if not self.query(f"agentgraph_sla_seconds{{{sel}}}"):
            raise Unavailable("NoSamples", f"no samples of the gateway of {namespace}/{graph} in "
                              f"{self.url} (is it scraped? see README, Replanning)")
        rate = _scalar(self.query(f"sum(rate(agentgraph_requests_total{{{sel}}}[{w}]))"))
        quantile = _scalar(self.query(
            f"histogram_quantile({percentile / 100:g}, sum by (le) "
            f"(rate(agentgraph_request_duration_seconds_bucket{{{sel}}}[{w}])))"))
        by = "step, phase, pool"
        sums = _by_slot(self.query(
            f"sum by ({by}) (rate(agentgraph_worker_service_seconds_sum{{{sel}}}[{w}]))"))
        counts = _by_slot(self.query(
            f"sum by ({by}) (rate(agentgraph_worker_service_seconds_count{{{sel}}}[{w}]))"))
        predicted = _by_slot(self.query(
            f"max by ({by}) (agentgraph_worker_predicted_seconds{{{sel}}})"))
        slots = []
        for key, per_second in sorted(counts.items()):
            if per_second <= 0 or key not in sums or key not in predicted:
                continue
            slots.append(SlotMeasure(step=key[0], phase=key[1], pool=key[2],
                                     mean_seconds=sums[key] / per_second,
                                     predicted_seconds=predicted[key],
                                     calls=per_second * window_seconds))
        return Measurement(window_seconds=window_seconds, rate=rate or 0.0,
                           latency=quantile if rate else None, slots=tuple(slots))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _value(sample: dict[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _scalar(result: list[dict[str, Any]]) -> float | None:
    return _value(result[0]) if result else None


def _by_slot(result: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    out = {}
    for sample in result:
        labels = sample.get("metric", {})
        value = _value(sample)
        if value is not None and {"step", "phase", "pool"} <= labels.keys():
            out[(labels["step"], labels["phase"], labels["pool"])] = value
    return out
