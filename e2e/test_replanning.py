"""Replanning from Prometheus, end to end: the real Prometheus scrapes the real gateway and
workers (Kubernetes pod discovery against our API server), and the operator reads it back.

More load than planned scales out until the latency is back under the SLA, less scales in and
the cost falls; a pool slower than its profile says loses the step; a Prometheus outage is a
condition and keeps the plan; advisory mode recommends and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from conftest import ROOT, Kube, Operator, apply, gateway, pods, reach, ready, wait_for
from loaddriver import load

PROMETHEUS = os.environ.get("AGENTGRAPH_E2E_PROMETHEUS_URL", "http://127.0.0.1:9099")
WAIT_READY_S = 120.0
REACT_S = 90.0  # breach -> new plan: two windows, a cooldown and a rollout, with margin
SETTINGS = {"prometheusUrl": PROMETHEUS,
            "replan": {"intervalSeconds": 5, "windowSeconds": 20, "cooldownSeconds": 25,
                       "minCalls": 5}}


@pytest.fixture(scope="module")
def replanner(operator: Operator) -> Operator:
    """The module's operator, restarted with Prometheus and a fast replanner."""
    operator.stop_all()
    operator.settings = SETTINGS
    operator.start()
    return operator


def graph(name: str, rate: float, mode: str = "auto", latency: float = 0.1,
          sla: float = 0.5) -> dict[str, Any]:
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"latencySeconds": sla, "targetRequestsPerSecond": rate},
                     "replan": {"mode": mode},
                     "steps": [{"name": "call", "kind": "tool",
                                "tool": {"latencySeconds": latency, "concurrency": 1}}]}}


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    st: dict[str, Any] = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n",
                                   namespace).get("status", {})
    return st


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def step(st: dict[str, Any]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = st.get("plan", {}).get("steps", [])
    assert len(steps) == 1, steps
    return steps[0]


def test_more_load_scales_out_until_the_sla_holds_and_less_scales_in(
        kube: Kube, replanner: Operator, namespace: str) -> None:
    apply(kube, namespace, graph("busy", rate=2))
    wait_for("busy Ready", lambda: ready(kube, namespace, "busy"), WAIT_READY_S)
    before = status(kube, namespace, "busy")
    assert step(before)["replicas"] == 1
    cost_before = before["plan"]["costPerHour"]
    with reach(kube, namespace, gateway(kube, namespace, "busy"), 8080) as url, \
            load(f"{url}/v1/invoke") as driver:
        driver.rate = 4  # the plan's own load: measured, nothing to change
        wait_for("a measurement", lambda: "observed" in status(kube, namespace, "busy"), 40)
        assert step(status(kube, namespace, "busy"))["replicas"] == 1
        breach = time.monotonic()
        driver.rate = 25  # one replica serves about 10/s: it queues, then refuses
        wait_for("a scale-out", lambda: step(status(kube, namespace, "busy"))["replicas"] >= 2,
                 REACT_S)
        reacted = time.monotonic() - breach
        wait_for("a plan for the whole load, Ready", lambda: (
            status(kube, namespace, "busy")["plan"].get("plannedRequestsPerSecond", 0)
            >= 20 and ready(kube, namespace, "busy")), REACT_S)  # loadgen delivers ~24 of 25
        settled = time.monotonic() + 3
        time.sleep(18)
        p95 = driver.p95_since(settled)
        st = status(kube, namespace, "busy")
        assert p95 <= 0.5, f"p95 {p95:.3f} s after scaling out ({st.get('observed')})"
        assert step(st)["replicas"] >= 4
        assert "measured" in st["replan"]["decision"]
        scaled = st["plan"]["costPerHour"]
        assert scaled > cost_before
        driver.rate = 2
        wait_for("a scale-in", lambda: step(status(kube, namespace, "busy"))["replicas"] == 1,
                 REACT_S + 30)
    after = status(kube, namespace, "busy")
    assert after["plan"]["costPerHour"] < scaled
    events = kube("get", "events", "-n", namespace, "--field-selector",
                  "involvedObject.name=busy", "-o", "jsonpath={.items[*].reason}").split()
    assert "Learned" in events and "Replanned" in events, events
    print(f"breach -> scaled-out plan Ready in {reacted:.1f} s")


SLOW = "agentgraph.dev/emulator-slowdown"


def test_a_pool_slower_than_its_profile_loses_the_step(
        kube: Kube, replanner: Operator, namespace: str) -> None:
    apply(kube, namespace, graph("slow-pool", rate=2, latency=0.2, sla=0.5))
    wait_for("slow-pool Ready", lambda: ready(kube, namespace, "slow-pool"), WAIT_READY_S)
    first = step(status(kube, namespace, "slow-pool"))["pool"]
    try:
        # Its workers now take 3x what the profile predicts: 0.6 s, over the 0.5 s SLA.
        kube("annotate", "hardwareprofile", first, f"{SLOW}=3", "--overwrite")
        with reach(kube, namespace, gateway(kube, namespace, "slow-pool"), 8080) as url, \
                load(f"{url}/v1/invoke") as driver:
            driver.rate = 3
            wait_for(f"the step off {first}",
                     lambda: step(status(kube, namespace, "slow-pool"))["pool"] != first,
                     REACT_S + 30)
        st = status(kube, namespace, "slow-pool")
        learned = {(c["step"], c["pool"]): c["factor"] for c in st["replan"]["corrections"]}
        assert learned[("call", first)] > 1.5, learned
        assert first in st["replan"]["decision"]
    finally:
        kube("annotate", "hardwareprofile", first, f"{SLOW}-", check=False)
    moved = [p for p in pods(kube, namespace, "agentgraph.dev/graph=slow-pool,"
                                              "agentgraph.dev/step=call")]
    wait_for("the old pool's pods gone", lambda: all(
        p["metadata"]["labels"].get("agentgraph.dev/pool") != first
        for p in pods(kube, namespace, "agentgraph.dev/graph=slow-pool,"
                                       "agentgraph.dev/step=call")), 60)
    assert moved


def _cluster(command: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "e2e" / "cluster.py"), command], check=True,
                   capture_output=True, text=True, timeout=120)


def test_a_prometheus_outage_is_a_condition_and_keeps_the_plan(
        kube: Kube, replanner: Operator, namespace: str) -> None:
    if not PROMETHEUS.startswith("http://127.0.0.1:9099"):
        pytest.skip("stops and starts the local cluster's Prometheus; yours is not ours to stop")
    apply(kube, namespace, graph("outage", rate=2))
    wait_for("outage Ready", lambda: ready(kube, namespace, "outage"), WAIT_READY_S)
    with reach(kube, namespace, gateway(kube, namespace, "outage"), 8080) as url, \
            load(f"{url}/v1/invoke") as driver:
        driver.rate = 2
        wait_for("fresh metrics", lambda: condition(status(kube, namespace, "outage"),
                                                    "MetricsUnavailable").get("status")
                 == "False", 40)
        plan = status(kube, namespace, "outage")["plan"]
        _cluster("stop-prometheus")
        try:
            wait_for("MetricsUnavailable", lambda: condition(
                status(kube, namespace, "outage"), "MetricsUnavailable").get("status") == "True",
                30)
            st = status(kube, namespace, "outage")
            cond = condition(st, "MetricsUnavailable")
            assert cond["reason"] == "PrometheusUnreachable", cond
            assert "9099" in cond["message"] and "kept" in cond["message"]
            assert condition(st, "SLAMet")["reason"] in ("Predicted", "NotPredicted")
            time.sleep(10)  # several passes without measurements
            assert status(kube, namespace, "outage")["plan"] == plan
            assert ready(kube, namespace, "outage")
        finally:
            _cluster("start-prometheus")
        wait_for("MetricsUnavailable cleared", lambda: condition(
            status(kube, namespace, "outage"), "MetricsUnavailable").get("status") == "False", 60)
    events = kube("get", "events", "-n", namespace, "--field-selector",
                  "involvedObject.name=outage", "-o", "jsonpath={.items[*].reason}").split()
    assert "MetricsUnavailable" in events and "MetricsAvailable" in events, events


def test_advisory_mode_recommends_and_changes_nothing(
        kube: Kube, replanner: Operator, namespace: str) -> None:
    apply(kube, namespace, graph("advice", rate=2, mode="advisory"))
    wait_for("advice Ready", lambda: ready(kube, namespace, "advice"), WAIT_READY_S)
    deployment = "advice-call"
    before = kube.json("get", "deployment", deployment, "-n", namespace)
    with reach(kube, namespace, gateway(kube, namespace, "advice"), 8080) as url, \
            load(f"{url}/v1/invoke") as driver:
        driver.rate = 25
        wait_for("a recommendation", lambda: (status(kube, namespace, "advice").get("replan")
                                              or {}).get("recommended") is not None, REACT_S)
    st = status(kube, namespace, "advice")
    recommended = st["replan"]["recommended"]["steps"][0]
    assert recommended["replicas"] > step(st)["replicas"] == 1
    assert st["replan"]["savingPerHour"] < 0  # meeting the load costs more
    after = kube.json("get", "deployment", deployment, "-n", namespace)
    assert after["spec"]["replicas"] == before["spec"]["replicas"] == 1
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    events = kube("get", "events", "-n", namespace, "--field-selector",
                  "involvedObject.name=advice", "-o", "jsonpath={.items[*].reason}").split()
    assert "Recommended" in events and "Replanned" not in events, events
