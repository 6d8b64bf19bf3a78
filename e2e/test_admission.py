"""Admission on the real cluster: two graphs that each fit a pool alone but not together, one
Ready and one waiting with its queue position until the first is deleted; a namespace over its
$/hour budget is not admitted until the budget is raised."""

from __future__ import annotations

from typing import Any

from conftest import Kube, Operator, apply, pods, ready, wait_for

WAIT_READY_S = 120.0
POOL = "xeon-8480"  # 4 nodes of 112 cores on the local cluster


def big(name: str) -> dict[str, Any]:
    """Three replicas of 100 cores on the Xeon pool: 300 of its 448 cores."""
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"latencySeconds": 1, "targetRequestsPerSecond": 20},
                     "replan": {"mode": "off"},
                     "steps": [{"name": "crunch", "kind": "tool",
                                "constraints": {"pinnedPool": POOL},
                                "tool": {"latencySeconds": 0.1, "cpuCores": 100,
                                         "concurrency": 1}}]}}


def condition(kube: Kube, namespace: str, name: str, type_: str) -> dict[str, Any]:
    st = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace).get("status", {})
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def test_the_second_of_two_graphs_waits_in_line_until_room_frees(
        kube: Kube, operator: Operator, namespace: str) -> None:
    apply(kube, namespace, big("first"))
    wait_for("first Ready", lambda: ready(kube, namespace, "first"), WAIT_READY_S)
    apply(kube, namespace, big("second"))
    wait_for("second told to wait", lambda: condition(
        kube, namespace, "second", "Admitted").get("reason") == "InsufficientCapacity", 60)
    admitted = condition(kube, namespace, "second", "Admitted")
    assert admitted["status"] == "False"
    assert POOL in admitted["message"] and "queue position 1" in admitted["message"]
    assert "with room it would cost $" in admitted["message"]
    st = kube.json("get", "agentgraphs.agentgraph.dev", "second", "-n", namespace)["status"]
    assert st["admission"]["queuePosition"] == 1
    assert not pods(kube, namespace, "agentgraph.dev/graph=second")  # nothing created
    assert ready(kube, namespace, "first")  # the first keeps its room and its pods
    kube("delete", "agentgraphs.agentgraph.dev", "first", "-n", namespace)
    wait_for("second admitted and Ready", lambda: ready(kube, namespace, "second"),
             WAIT_READY_S)
    assert condition(kube, namespace, "second", "Admitted")["status"] == "True"
    placed = {p["metadata"]["labels"]["agentgraph.dev/pool"]
              for p in pods(kube, namespace, "agentgraph.dev/graph=second,"
                                             "agentgraph.dev/component=worker")}
    assert placed == {POOL}


def test_a_namespace_over_its_budget_waits_until_the_budget_is_raised(
        kube: Kube, operator: Operator, namespace: str) -> None:
    kube("annotate", "namespace", namespace, "agentgraph.dev/budget-per-hour=0.001")
    apply(kube, namespace, big("costly"))
    wait_for("told it is over budget", lambda: condition(
        kube, namespace, "costly", "Admitted").get("reason") == "OverBudget", 60)
    message = condition(kube, namespace, "costly", "Admitted")["message"]
    assert f"namespace {namespace}" in message and "over its budget of $0.001/hour" in message
    assert not pods(kube, namespace, "agentgraph.dev/graph=costly")
    kube("annotate", "namespace", namespace, "agentgraph.dev/budget-per-hour=1000",
         "--overwrite")
    wait_for("admitted once the budget allows it", lambda: ready(kube, namespace, "costly"),
             WAIT_READY_S)  # the resync (5 s here) reads the new budget
    st = kube.json("get", "agentgraphs.agentgraph.dev", "costly", "-n", namespace)["status"]
    assert st["admission"]["namespaceBudgetPerHour"] == 1000
    assert 0 < st["admission"]["namespaceSpendPerHour"] <= 1000
