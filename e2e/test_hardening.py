"""Hardening on the real API server and operator: bad input is refused at apply with the field
named, or becomes a condition and an event on the graph; nothing crashes, nothing is silently
changed or taken over; step pods pass the restricted Pod Security Standard."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from builders import EXAMPLES_DIR
from conftest import Kube, Operator, wait_for

WAIT_S = 90.0
SMALL: dict[str, Any] = {
    "apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
    "metadata": {"name": "small"},
    "spec": {"sla": {"latencySeconds": 3.0, "targetRequestsPerSecond": 2},
             "steps": [{"name": "search", "kind": "tool",
                        "tool": {"latencySeconds": 0.3, "memoryGb": 0.75}},
                       {"name": "rank", "kind": "compute", "dependsOn": ["search"],
                        "compute": {"coreSeconds": 0.2, "maxCores": 2}}]},
}


def graph(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SMALL)
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def conditions(kube: Kube, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    obj = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def refused(kube: Kube, namespace: str, doc: dict[str, Any]) -> str:
    done = kube.attempt("apply", "-n", namespace, "--server-side", "--field-manager=e2e",
                        "-f", "-", stdin=yaml.safe_dump(doc))
    assert done.returncode != 0, f"the API server took {doc['metadata']['name']}"
    return done.stderr


def test_the_api_server_refuses_numbers_and_names_out_of_range(kube: Kube, operator: Operator,
                                                               namespace: str) -> None:
    err = refused(kube, namespace, graph(metadata={"name": "1st"}))
    assert "metadata.name must be a DNS-1035 label" in err
    err = refused(kube, namespace, graph(spec__sla__latencySeconds=1e308))
    assert "spec.sla.latencySeconds" in err and "less than or equal to 1e+09" in err
    err = refused(kube, namespace, graph(spec__steps__1__compute__maxCores=1e30))
    assert "spec.steps[1].compute.maxCores" in err
    both = graph()
    both["spec"]["steps"][0]["tool"]["memoryGB"] = 1
    err = refused(kube, namespace, both)
    assert "give memoryGB only (memoryGb is its old spelling)" in err


def test_the_old_memory_spelling_is_kept_and_planned(kube: Kube, operator: Operator,
                                                     namespace: str) -> None:
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(SMALL))
    stored = kube.json("get", "agentgraphs.agentgraph.dev", "small", "-n", namespace)
    assert stored["spec"]["steps"][0]["tool"]["memoryGb"] == 0.75  # not pruned
    wait_for("Ready", lambda: conditions(kube, namespace, "small").get("Ready", {}).get(
        "status") == "True", WAIT_S)
    deployment = kube.json("get", "deployment", "small-search", "-n", namespace)
    memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert memory["memory"] == "768Mi"  # 0.75 GiB: the value was read, not defaulted


def test_steps_rendering_one_object_are_infeasible_naming_both(
        kube: Kube, operator: Operator, namespace: str) -> None:
    doc = graph(metadata={"name": "clash"})
    doc["spec"]["steps"] = [
        {"name": "a", "kind": "agent", "agent": {"steps": [
            {"name": "b", "kind": "tool", "tool": {"latencySeconds": 0.1}}]}},
        {"name": "a-b", "kind": "tool", "tool": {"latencySeconds": 0.1}}]
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(doc))
    wait_for("Infeasible", lambda: conditions(kube, namespace, "clash").get(
        "Infeasible", {}).get("status") == "True", WAIT_S)
    message = conditions(kube, namespace, "clash")["Infeasible"]["message"]
    assert ("spec.steps[1].name: step a-b would render objects named 'clash-a-b', as step a.b "
            "(spec.steps[0].agent.steps[0]) does") in message
    assert not kube.json("get", "deployments", "-n", namespace)["items"]


def _deny_deployments(namespace: str) -> str:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"deny-{namespace}"},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": ["apps"], "apiVersions": ["v1"],
                     "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                 "validations": [{"expression": "false",
                                  "message": "deployments are frozen here (e2e)"}]}}
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"deny-{namespace}"},
        "spec": {"policyName": f"deny-{namespace}", "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}}
    return "\n---\n".join(yaml.safe_dump(d) for d in (policy, binding))


def test_an_unforeseen_error_reaches_the_graph_and_clears(kube: Kube, operator: Operator,
                                                          namespace: str) -> None:
    """An admission policy (a real one, in the API server) refuses our Deployments: the graph
    says so in a ReconcileError condition and a Warning event; lifted, the graph goes Ready."""
    policy = _deny_deployments(namespace)
    kube("apply", "-f", "-", stdin=policy)
    probe = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: probe}\nspec:\n"
             "  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n"
             "    spec: {containers: [{name: c, image: x}]}\n")
    try:
        wait_for("the policy in force", lambda: "frozen here" in kube.attempt(
            "apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=probe).stderr, 30)
        kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
             stdin=yaml.safe_dump(SMALL))
        wait_for("ReconcileError", lambda: conditions(kube, namespace, "small").get(
            "ReconcileError", {}).get("status") == "True", WAIT_S)
        message = conditions(kube, namespace, "small")["ReconcileError"]["message"]
        assert "deployments are frozen here (e2e)" in message
        events = [e for e in kube.json("get", "events", "-n", namespace)["items"]
                  if e["reason"] == "UnexpectedError"]
        assert events and events[0]["type"] == "Warning"
        assert "frozen here" in events[0]["message"]
    finally:
        kube("delete", "-f", "-", "--ignore-not-found", stdin=policy)
    wait_for("Ready once the policy is gone", lambda: conditions(kube, namespace, "small").get(
        "Ready", {}).get("status") == "True", WAIT_S)
    cleared = conditions(kube, namespace, "small")["ReconcileError"]
    assert (cleared["status"], cleared["reason"]) == ("False", "Reconciled")


def test_pods_in_any_quantity_unit_do_not_stop_planning(kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    nodes = kube.json("get", "nodes", "-l", "agentgraph.dev/pool=epyc-9654")["items"]
    odd = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "odd-units"},
           "spec": {"nodeName": nodes[0]["metadata"]["name"],
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "x", "resources": {
                        "requests": {"cpu": "500000u", "memory": "2000000000n"}}}]}}
    kube("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(odd))
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(graph(metadata={"name": "after-odd"})))
    wait_for("Planned", lambda: conditions(kube, namespace, "after-odd").get(
        "Planned", {}).get("status") == "True", WAIT_S)
    assert "ReconcileError" not in conditions(kube, namespace, "after-odd")


def test_the_voice_agent_runs_in_a_restricted_namespace(kube: Kube, operator: Operator,
                                                       namespace: str) -> None:
    """The API server's PodSecurity admission enforces 'restricted' here: every pod the
    operator makes (workers and gateway) must pass it for the graph to reach Ready."""
    kube("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
         "pod-security.kubernetes.io/enforce-version=latest")
    voice = (EXAMPLES_DIR / "voice-agent.yaml").read_text()
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=voice)
    wait_for("voice-agent Ready under restricted", lambda: conditions(
        kube, namespace, "voice-agent").get("Ready", {}).get("status") == "True", 120)
    pods = kube.json("get", "pods", "-n", namespace)["items"]
    assert pods and all(p["spec"]["securityContext"]["runAsNonRoot"] for p in pods)
