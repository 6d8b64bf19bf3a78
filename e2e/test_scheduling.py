"""The real API server accepts our CRDs; the real scheduler binds rendered pods to the planned
pools; deleting the graph garbage-collects its children."""

from __future__ import annotations

import yaml

from agentgraph.api.loading import parse
from agentgraph.controller import render
from agentgraph.planner import solve
from builders import EXAMPLES_DIR, shipped_profiles
from conftest import WAIT_DELETED_S, WAIT_SCHEDULED_S, Kube, install_crds_and_profiles, wait_for


def test_crds_and_examples_are_accepted(kube: Kube, namespace: str) -> None:
    install_crds_and_profiles(kube)
    profiles = kube.json("get", "hardwareprofiles")["items"]
    assert {p["metadata"]["name"] for p in profiles} >= {"h100", "b200", "xeon-8480"}
    kube("apply", "-n", namespace, "--server-side", "-f", str(EXAMPLES_DIR / "voice-agent.yaml"))
    stored = kube.json("get", "agentgraph", "voice-agent", "-n", namespace)
    assert stored["spec"]["sla"]["latencySeconds"] == 4.0


def test_api_server_rejects_a_step_without_its_kind_block(kube: Kube, namespace: str) -> None:
    install_crds_and_profiles(kube)
    bad = {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
           "metadata": {"name": "bad", "namespace": namespace},
           "spec": {"sla": {"latencySeconds": 1}, "steps": [{"name": "a", "kind": "llm"}]}}
    done = kube.attempt("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(bad))
    assert done.returncode != 0
    assert "kind 'llm' needs field 'llm'" in done.stderr
    duplicate = {**bad, "metadata": {"name": "dup", "namespace": namespace},
                 "spec": {"sla": {"latencySeconds": 1}, "steps": [
                     {"name": "a", "kind": "tool", "tool": {"latencySeconds": 1}},
                     {"name": "a", "kind": "tool", "tool": {"latencySeconds": 2}}]}}
    done = kube.attempt("create", "-f", "-", stdin=yaml.safe_dump(duplicate))
    assert done.returncode != 0
    assert "Duplicate value" in done.stderr


def test_scheduler_binds_each_step_to_its_planned_pool(kube: Kube, namespace: str) -> None:
    install_crds_and_profiles(kube)
    kube("apply", "-n", namespace, "--server-side", "-f", str(EXAMPLES_DIR / "voice-agent.yaml"))
    uid = kube.json("get", "agentgraph", "voice-agent", "-n", namespace)["metadata"]["uid"]
    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "voice").graphs[0]
    profiles = {p.name: p for p in shipped_profiles()}
    plan = solve.plan(graph, list(profiles.values()))
    assert plan.feasible
    objects = render.render(graph, plan, profiles, namespace, uid)
    kube.apply(objects)
    expected = sum(a.replicas for a in plan.assignments) + render.gateway_replicas(graph)

    def all_bound() -> bool:
        pods = kube.json("get", "pods", "-n", namespace)["items"]
        return len(pods) == expected and all(p["spec"].get("nodeName") for p in pods)

    wait_for(f"{expected} pods bound to nodes", all_bound, WAIT_SCHEDULED_S)
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"]
             for n in kube.json("get", "nodes")["items"]}
    gateway = render.gateway_pool(plan, profiles)
    assert gateway is not None
    for pod in kube.json("get", "pods", "-n", namespace)["items"]:
        pool = pod["metadata"]["labels"].get(render.LABEL_POOL, gateway.name)
        selector = profiles[pool].spec.pool.node_selector
        node_labels = nodes[pod["spec"]["nodeName"]]
        assert all(node_labels.get(k) == v for k, v in selector.items()), (pod["metadata"]["name"],
                                                                           pool)

    def deployments_available() -> bool:
        items = kube.json("get", "deployments", "-n", namespace)["items"]
        return len(items) == len(plan.assignments) + 1 and all(
            d.get("status", {}).get("availableReplicas") == d["spec"]["replicas"] for d in items)

    wait_for("every Deployment available", deployments_available, WAIT_SCHEDULED_S)

    kube("delete", "agentgraph", "voice-agent", "-n", namespace)
    wait_for("children garbage-collected",
             lambda: not kube.json("get", "deployments,services", "-n", namespace)["items"],
             WAIT_DELETED_S)
