"""The operator on a real control plane: plan -> pods on pools -> Ready; SLA changes replan;
pools losing nodes replan or go Infeasible; bad specs are Infeasible naming the field; deleting
the graph collects everything; a restarted operator duplicates nothing."""

from __future__ import annotations

import re
import signal
import urllib.request
from typing import Any

import yaml

from builders import EXAMPLES_DIR
from conftest import RESYNC_S, Kube, Operator, wait_for

WAIT_READY_S = 120.0
WAIT_REPLAN_S = 90.0
VOICE = yaml.safe_load((EXAMPLES_DIR / "voice-agent.yaml").read_text())


def condition(kube: Kube, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    obj = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)
    return next((c for c in obj.get("status", {}).get("conditions", [])
                 if c["type"] == type_), None)


def is_true(kube: Kube, namespace: str, name: str, type_: str) -> bool:
    c = condition(kube, namespace, name, type_)
    return c is not None and c["status"] == "True"


def apply_graph(kube: Kube, namespace: str, doc: dict[str, Any]) -> None:
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(doc))


def plan_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)
    plan: dict[str, Any] = obj.get("status", {}).get("plan", {})
    return plan


def test_liveness_endpoint_answers(operator: Operator) -> None:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen("http://127.0.0.1:18081/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for("the operator's liveness endpoint", healthy, 60)


def test_metrics_count_reconciles_and_report_each_graph(kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("Ready", lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)

    def scraped() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """name{labels} value lines, label order aside."""
        with urllib.request.urlopen("http://127.0.0.1:18181/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m:
                labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                out[(m.group(1), labels)] = float(m.group(3))
        return out

    graph = frozenset({("namespace", namespace), ("graph", "voice-agent")})
    wait_for("the graph's Ready gauge",
             lambda: scraped().get(("agentgraph_graph_ready", graph)) == 1.0, 30)
    seen = scraped()
    cost = plan_of(kube, namespace, "voice-agent")["costPerHour"]
    assert seen[("agentgraph_plan_cost_per_hour", graph)] == cost
    assert seen[("agentgraph_reconciles_total",
                 frozenset({("level", "FULL"), ("outcome", "planned")}))] >= 1
    assert seen[("agentgraph_reconcile_seconds_count", frozenset({("level", "READINESS")}))] >= 1
    kube("delete", "agentgraphs.agentgraph.dev", "voice-agent", "-n", namespace)
    wait_for("the deleted graph's gauges gone",
             lambda: ("agentgraph_graph_ready", graph) not in scraped(), 30)


def test_voice_agent_reaches_ready_on_the_planned_pools(kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("voice-agent Ready", lambda: is_true(kube, namespace, "voice-agent", "Ready"),
             WAIT_READY_S)
    plan = plan_of(kube, namespace, "voice-agent")
    assert plan["latencySeconds"] <= plan["slaSeconds"] == 4.0
    deployments = kube.json("get", "deployments", "-n", namespace)["items"]
    assert len(deployments) == len(plan["steps"]) + 1  # and the gateway
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"]
             for n in kube.json("get", "nodes")["items"]}
    for pod in kube.json("get", "pods", "-n", namespace)["items"]:
        labels = pod["metadata"]["labels"]
        node = nodes[pod["spec"]["nodeName"]]["agentgraph.dev/pool"]
        if labels["agentgraph.dev/component"] == "gateway":
            assert node in {"xeon-8480", "epyc-9654"}  # a CPU pool
        else:
            assert node == labels["agentgraph.dev/pool"]
    reasons = {e["reason"] for e in kube.json("get", "events", "-n", namespace)["items"]
               if e["involvedObject"]["kind"] == "AgentGraph"}
    assert {"Planned", "Ready"} <= reasons
    kube("delete", "agentgraphs.agentgraph.dev", "voice-agent", "-n", namespace)
    wait_for("children collected",
             lambda: not kube.json("get", "deployments,services", "-n", namespace)["items"],
             WAIT_REPLAN_S)


def test_a_looser_sla_replans_cheaper(kube: Kube, operator: Operator, namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("first plan", lambda: is_true(kube, namespace, "voice-agent", "Planned"),
             WAIT_READY_S)
    before = plan_of(kube, namespace, "voice-agent")
    looser = yaml.safe_load(yaml.safe_dump(VOICE))
    looser["spec"]["sla"]["latencySeconds"] = 8.0
    apply_graph(kube, namespace, looser)
    wait_for("the replanned status",
             lambda: plan_of(kube, namespace, "voice-agent").get("slaSeconds") == 8.0,
             WAIT_REPLAN_S)
    after = plan_of(kube, namespace, "voice-agent")
    assert after["costPerHour"] < before["costPerHour"]
    assert condition(kube, namespace, "voice-agent", "Planned")["observedGeneration"] == 2
    wait_for("Ready after the rollout",
             lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)


def test_invalid_spec_is_infeasible_naming_the_field(kube: Kube, operator: Operator,
                                                     namespace: str) -> None:
    bad = yaml.safe_load(yaml.safe_dump(VOICE))
    bad["metadata"]["name"] = "bad-deps"
    bad["spec"]["steps"][1]["dependsOn"] = ["no-such-step"]
    apply_graph(kube, namespace, bad)
    wait_for("Infeasible", lambda: is_true(kube, namespace, "bad-deps", "Infeasible"),
             WAIT_REPLAN_S)
    message = condition(kube, namespace, "bad-deps", "Infeasible")["message"]
    assert "spec.steps[1].dependsOn[0]: unknown step 'no-such-step'" in message
    assert not kube.json("get", "deployments", "-n", namespace)["items"]
    events = [e for e in kube.json("get", "events", "-n", namespace)["items"]
              if e["reason"] == "Infeasible"]
    assert events and "no-such-step" in events[0]["message"]


def test_an_impossible_sla_says_the_lowest_latency(kube: Kube, operator: Operator,
                                                   namespace: str) -> None:
    tight = yaml.safe_load(yaml.safe_dump(VOICE))
    tight["metadata"]["name"] = "too-tight"
    tight["spec"]["sla"]["latencySeconds"] = 0.5
    apply_graph(kube, namespace, tight)
    wait_for("Infeasible", lambda: is_true(kube, namespace, "too-tight", "Infeasible"),
             WAIT_REPLAN_S)
    message = condition(kube, namespace, "too-tight", "Infeasible")["message"]
    assert "spec.sla.latencySeconds: 0.5 s cannot be met" in message
    assert "the lowest latency any plan reaches" in message


def test_losing_a_pools_nodes_replans_onto_what_is_left(kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("first plan", lambda: is_true(kube, namespace, "voice-agent", "Planned"),
             WAIT_READY_S)
    pools = {s["pool"] for s in plan_of(kube, namespace, "voice-agent")["steps"]}
    gone = sorted(p for p in pools if p in ("b200", "gaudi3", "mi300x", "h200", "h100"))[0]
    nodes = [n["metadata"]["name"] for n in kube.json(
        "get", "nodes", "-l", f"agentgraph.dev/pool={gone}")["items"]]
    try:
        for node in nodes:
            kube("cordon", node)
        wait_for(f"a plan without {gone}",
                 lambda: gone not in {s["pool"] for s in
                                      plan_of(kube, namespace, "voice-agent")["steps"]}
                 or is_true(kube, namespace, "voice-agent", "Infeasible"),
                 WAIT_REPLAN_S)
        if not is_true(kube, namespace, "voice-agent", "Infeasible"):
            wait_for("Ready on the remaining pools",
                     lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)
            for pod in kube.json("get", "pods", "-n", namespace)["items"]:
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                assert pod["metadata"]["labels"].get("agentgraph.dev/pool") != gone
    finally:
        for node in nodes:
            kube("uncordon", node)


def test_a_restarted_operator_duplicates_nothing(kube: Kube, operator: Operator,
                                                 namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("Ready", lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)
    before = sorted(d["metadata"]["name"]
                    for d in kube.json("get", "deployments", "-n", namespace)["items"])
    standby = operator.start(port=18082)  # a second replica must stand by, not act
    wait_for("the second replica standing by", lambda: "standing by" in operator.log(1), 30)
    with urllib.request.urlopen("http://127.0.0.1:18082/healthz", timeout=5) as r:
        assert r.status == 200  # a standby is alive: its liveness probe must not restart it
    looser = yaml.safe_load(yaml.safe_dump(VOICE))
    looser["spec"]["sla"]["latencySeconds"] = 6.0
    apply_graph(kube, namespace, looser)
    leader = operator.procs[0]
    Operator.stop(leader, signal.SIGKILL)  # mid-reconcile, no clean shutdown, lease left held
    wait_for("the standby to take over and replan",
             lambda: plan_of(kube, namespace, "voice-agent").get("slaSeconds") == 6.0,
             WAIT_REPLAN_S)
    wait_for("Ready again", lambda: is_true(kube, namespace, "voice-agent", "Ready"),
             WAIT_READY_S)
    after = sorted(d["metadata"]["name"]
                   for d in kube.json("get", "deployments", "-n", namespace)["items"])
    assert after == before
    owners = [d["metadata"]["ownerReferences"]
              for d in kube.json("get", "deployments", "-n", namespace)["items"]]
    assert all(len(o) == 1 for o in owners)
    assert standby.poll() is None


def test_more_load_scales_out_without_a_gap(kube: Kube, operator: Operator,
                                           namespace: str) -> None:
    apply_graph(kube, namespace, VOICE)
    wait_for("Ready", lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)
    before = {(s["step"], s.get("phase")): s["replicas"]
              for s in plan_of(kube, namespace, "voice-agent")["steps"]}
    names = sorted(d["metadata"]["name"]
                   for d in kube.json("get", "deployments", "-n", namespace)["items"])
    busier = yaml.safe_load(yaml.safe_dump(VOICE))
    busier["spec"]["sla"]["targetRequestsPerSecond"] = 15
    apply_graph(kube, namespace, busier)
    lowest_available: dict[str, int] = {}

    def scaled_and_ready() -> bool:
        # Traffic-safe: no step is ever left without an available replica during the change.
        for d in kube.json("get", "deployments", "-n", namespace)["items"]:
            name = d["metadata"]["name"]
            available = d.get("status", {}).get("availableReplicas", 0)
            lowest_available[name] = min(lowest_available.get(name, available), available)
        planned = plan_of(kube, namespace, "voice-agent")
        return (condition(kube, namespace, "voice-agent", "Planned")["observedGeneration"] == 2
                and is_true(kube, namespace, "voice-agent", "Ready")
                and sum(s["replicas"] for s in planned["steps"]) > sum(before.values()))

    wait_for("the scaled-out plan Ready", scaled_and_ready, WAIT_READY_S)
    after = {(s["step"], s.get("phase")): s["replicas"]
             for s in plan_of(kube, namespace, "voice-agent")["steps"]}
    assert any(after.get(k, 0) > n for k, n in before.items())
    assert sorted(d["metadata"]["name"] for d in kube.json(
        "get", "deployments", "-n", namespace)["items"]) == names  # updated in place
    assert all(v >= 1 for v in lowest_available.values()), lowest_available
    for d in kube.json("get", "deployments", "-n", namespace)["items"]:
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_drift_in_a_step_is_undone(kube: Kube, operator: Operator, namespace: str) -> None:
    """Someone edits a step's Deployment: scaling it is undone at once (its event escalates to
    a FULL reconcile); a pod-template change by the next resync. And the graph keeps no
    finalizer of ours, so deleting it never waits for the operator."""
    apply_graph(kube, namespace, VOICE)
    wait_for("Ready", lambda: is_true(kube, namespace, "voice-agent", "Ready"), WAIT_READY_S)
    step = "voice-agent-embed"
    wanted = kube.json("get", "deployment", step, "-n", namespace)["spec"]
    kube("scale", "deployment", step, "-n", namespace, "--replicas=7")
    kube("set", "image", f"deployment/{step}", "-n", namespace, "step=example.com/other:1")

    def mended() -> bool:
        spec = kube.json("get", "deployment", step, "-n", namespace)["spec"]
        return bool(spec["replicas"] == wanted["replicas"]
                    and spec["template"]["spec"]["containers"][0]["image"]
                    == wanted["template"]["spec"]["containers"][0]["image"])

    wait_for("the drift undone", mended, 6 * RESYNC_S)
    graph = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n", namespace)
    assert not graph["metadata"].get("finalizers")
