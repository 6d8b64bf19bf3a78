"""Hardening on the real API server and operator: bad input is refused at apply with the field
named, or becomes a condition and an event on the graph; nothing crashes, nothing is silently
changed or taken over; step pods pass the restricted Pod Security Standard."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import EXAMPLES_DIR, ROOT
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
    nested = graph()  # a sub-agent's steps get the same rules as top-level ones
    nested["spec"]["steps"].append({"name": "helper", "kind": "agent", "agent": {"steps": [
        {"name": "inner", "kind": "tool", "compute": {"coreSeconds": 1}}]}})
    err = refused(kube, namespace, nested)
    assert "spec.steps[2].agent.steps[0]" in err and "kind 'tool' needs field 'tool'" in err


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


def test_a_users_object_of_the_same_name_is_never_taken_over(
        kube: Kube, operator: Operator, namespace: str) -> None:
    """A user's Service already named like the graph's gateway: the graph is Infeasible with a
    condition and a Warning event naming it, the Service is left exactly as it was (no owner
    reference, its labels and selector), nothing of the graph is created; once the user
    deletes it, the graph goes on to Ready by itself."""
    mine = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "taken-gateway", "labels": {"owner": "someone-else"}},
            "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}}
    kube("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(mine))
    before = kube.json("get", "service", "taken-gateway", "-n", namespace)
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(graph(metadata={"name": "taken"})))
    wanted = f"Service/taken-gateway: exists in namespace {namespace} and is not this graph's"
    wait_for("Infeasible naming the Service", lambda: wanted in conditions(
        kube, namespace, "taken").get("Infeasible", {}).get("message", ""), WAIT_S)
    events = kube.json("get", "events", "-n", namespace,
                       "--field-selector", "involvedObject.name=taken")["items"]
    assert any(e["type"] == "Warning" and wanted in e["message"] for e in events), events
    after = kube.json("get", "service", "taken-gateway", "-n", namespace)
    assert not after["metadata"].get("ownerReferences")
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["spec"]["selector"] == {"app": "theirs"}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not kube.json("get", "deployments", "-n", namespace)["items"]
    kube("delete", "service", "taken-gateway", "-n", namespace)
    wait_for("Ready once the name is free", lambda: conditions(kube, namespace, "taken").get(
        "Ready", {}).get("status") == "True", WAIT_S)
    service = kube.json("get", "service", "taken-gateway", "-n", namespace)
    assert any(ref["kind"] == "AgentGraph" for ref in service["metadata"]["ownerReferences"])


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


def test_a_spec_past_the_annotation_limit_reconciles(kube: Kube, operator: Operator,
                                                     namespace: str) -> None:
    """Ten steps with 256 measured table entries each: a spec of over 256 KiB, more than
    the API server lets annotations hold (kopf's last-handled configuration kept the whole
    spec in one). It plans and runs, and nothing copies the spec into an annotation."""
    pools = sorted(p["metadata"]["name"] for p in kube.json(
        "get", "hardwareprofiles.agentgraph.dev")["items"])
    steps = []
    for s in range(10):
        entries = [{"pool": pools[i % len(pools)], "latencySeconds": round(0.05 + i * 1e-4, 6),
                    "costPerRequest": round(1e-4 + (i % 7) * 1e-5, 9),
                    "requestsPerSecondPerReplica": round(5 + i * 0.01, 4)}
                   for i in range(256)]
        steps.append({"name": f"measured-{s}", "kind": "compute", "costModel": "table",
                      "dependsOn": [f"measured-{s - 1}"] if s else [],
                      "table": {"entries": entries}})
    doc = {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
           "metadata": {"name": "big"},
           "spec": {"sla": {"latencySeconds": 5.0, "targetRequestsPerSecond": 1},
                    "steps": steps}}
    text = yaml.safe_dump(doc)
    assert len(json.dumps(doc["spec"])) > 256 * 1024
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=text)
    try:
        wait_for("Ready", lambda: conditions(kube, namespace, "big").get("Ready", {}).get(
            "status") == "True", WAIT_S)
    except AssertionError:
        print(conditions(kube, namespace, "big"), operator.log(0)[-6000:])
        raise
    annotations = kube.json("get", "agentgraphs.agentgraph.dev", "big", "-n", namespace)[
        "metadata"].get("annotations", {})
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 4096, sorted(annotations)


NUMBERS = st.sampled_from([0.05, 0.3, 2.0, 40.0, 1e9])
COUNTS = st.sampled_from([1, 2, 8, 64])
# One of these, in one place, in about a third of the specs: the API server must refuse it.
OUT_OF_RANGE = st.sampled_from([0, -1, 1e10, 1e-12, 10**13])


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """AgentGraphs a user might write, right or wrong: odd numbers, unknown or cyclic
    dependencies, loops, kinds without their block, models that fit nowhere, odd names."""
    names = [f"s{i}" for i in range(draw(st.integers(1, 4)))]
    steps = []
    for i, name in enumerate(names):
        kind = draw(st.sampled_from(["tool", "compute", "llm", "vector-search", "embedding"]))
        deps = draw(st.lists(st.sampled_from([*names[:i + 1], "ghost"]), max_size=2,
                             unique=True))
        step: dict[str, Any] = {"name": name, "kind": kind, "dependsOn": deps}
        if kind == "tool":
            step["tool"] = {"latencySeconds": draw(NUMBERS)}
        elif kind == "compute":
            step["compute"] = {"coreSeconds": draw(NUMBERS), "maxCores": draw(COUNTS)}
        elif kind == "llm":
            billions = draw(st.sampled_from([8, 8, 70, 4000, -1]))
            step["llm"] = {"model": {"parametersBillions": billions, "layers": draw(COUNTS),
                                     "hiddenSize": 4096, "heads": 32, "kvHeads": 8},
                           "inputTokens": draw(COUNTS), "outputTokens": 64}
        elif kind == "vector-search":
            step["vectorSearch"] = {"vectors": draw(COUNTS), "dimensions": 384}
        elif draw(st.booleans()):
            step["embedding"] = {"parametersBillions": 0.02, "tokens": 64}
        steps.append(step)
    spec: dict[str, Any] = {"sla": {"latencySeconds": draw(NUMBERS)}, "steps": steps}
    if draw(st.booleans()):
        spec["sla"]["targetRequestsPerSecond"] = draw(st.sampled_from([1, 50, 1e8]))
    if draw(st.booleans()):
        members = draw(st.lists(st.sampled_from([*names, "ghost"]), min_size=1, max_size=3,
                                unique=True))
        spec["loops"] = [{"steps": members, "expectedIterations": draw(NUMBERS),
                          "maxIterations": draw(COUNTS)}]
    if draw(st.integers(0, 2)) == 0:
        field = draw(st.sampled_from([*range(len(steps)), "sla"]))
        if field == "sla":
            spec["sla"]["latencySeconds"] = draw(OUT_OF_RANGE)
        else:
            block = next(v for v in steps[int(field)].values() if isinstance(v, dict)) \
                if any(isinstance(v, dict) for v in steps[int(field)].values()) else None
            if block is not None:
                key = draw(st.sampled_from(sorted(k for k, v in block.items()
                                                  if isinstance(v, (int, float)))))
                block[key] = draw(OUT_OF_RANGE)
    name = draw(st.sampled_from(["fuzz"] * 8 + ["2fuzz", "Fuzz", "f" * 45]))
    return {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
            "metadata": {"name": name}, "spec": spec}


FUZZ_EXAMPLES = 40
FUZZ_WAIT_S = 30.0


def test_fuzzed_specs_each_end_in_a_condition(kube: Kube, operator: Operator,
                                              namespace: str) -> None:
    """Every spec the API server takes ends Planned, Infeasible or waiting for room
    (Admitted=False), with a message, never in a ReconcileError; every one it refuses says
    why; the operator stays up throughout."""
    seen = {"refused": 0, "planned": 0, "infeasible": 0, "waiting": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def one(doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        done = kube.attempt("apply", "-n", namespace, "--server-side", "--force-conflicts",
                            "--field-manager=e2e", "-f", "-", stdin=yaml.safe_dump(doc))
        if done.returncode != 0:
            assert done.stderr.strip(), "a refusal must say why"
            seen["refused"] += 1
            return
        generation = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)[
            "metadata"]["generation"]

        def decided() -> bool:
            found = conditions(kube, namespace, name)
            return any(found.get(t, {}).get("status") == value
                       and found[t].get("observedGeneration") == generation
                       for t, value in (("Planned", "True"), ("Infeasible", "True"),
                                        ("Admitted", "False")))

        wait_for(f"a condition on {yaml.safe_dump(doc['spec'])}", decided, FUZZ_WAIT_S)
        found = conditions(kube, namespace, name)
        assert found.get("ReconcileError", {}).get("status") != "True", found["ReconcileError"]
        if found.get("Infeasible", {}).get("status") == "True":
            assert found["Infeasible"]["message"].strip()
            seen["infeasible"] += 1
        elif found.get("Planned", {}).get("status") == "True":
            seen["planned"] += 1
        else:
            assert found["Admitted"]["message"].strip()
            seen["waiting"] += 1
        assert operator.procs[0].poll() is None, "the operator exited"

    one()
    print(f"fuzzed specs: {sum(seen.values())} tried: {seen}")
    assert seen["refused"] and seen["infeasible"], seen  # both kinds of bad input came up


def test_the_operator_rides_out_an_api_server_restart(kube: Kube, operator: Operator,
                                                      namespace: str) -> None:
    """kube-apiserver stops and starts again under a running operator: it reconnects on its
    own (no restart of its process) and converges on a spec changed after the outage."""
    local = ROOT / ".cache" / "cluster" / "kubeconfig"
    if Path(os.environ.get("KUBECONFIG", "")).resolve() != local.resolve():
        pytest.skip("restarts the local cluster's API server; yours is not ours to restart")
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(SMALL))
    wait_for("Ready", lambda: conditions(kube, namespace, "small").get("Ready", {}).get(
        "status") == "True", WAIT_S)
    before = sorted(d["metadata"]["name"]
                    for d in kube.json("get", "deployments", "-n", namespace)["items"])
    subprocess.run([sys.executable, str(ROOT / "e2e" / "cluster.py"), "restart-apiserver"],
                   check=True, capture_output=True, text=True, timeout=120)
    looser = graph(spec__sla__latencySeconds=6.0)
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(looser))

    def replanned() -> bool:
        obj = kube.json("get", "agentgraphs.agentgraph.dev", "small", "-n", namespace)
        st = obj.get("status", {})
        return bool(st.get("plan", {}).get("slaSeconds") == 6.0 and any(
            c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])))

    try:
        wait_for("the new spec planned and Ready after the restart", replanned, WAIT_S)
    except AssertionError:
        print(conditions(kube, namespace, "small"), operator.procs[0].poll(),
              operator.log(0)[-5000:])
        raise
    assert operator.procs[0].poll() is None, "the operator exited instead of reconnecting"
    after = sorted(d["metadata"]["name"]
                   for d in kube.json("get", "deployments", "-n", namespace)["items"])
    assert after == before


GRAPHS = 20


def _steps_as_planned(kube: Kube, namespace: str) -> bool:
    """Every graph planned at generation 2, Ready, and its Deployments exactly the plan's."""
    graphs = kube.json("get", "agentgraphs.agentgraph.dev", "-n", namespace)["items"]
    deployments = kube.json("get", "deployments", "-n", namespace)["items"]
    if len(graphs) != GRAPHS:
        return False
    for g in graphs:
        st, name = g.get("status", {}), g["metadata"]["name"]
        found = {c["type"]: c for c in st.get("conditions", [])}
        if found.get("Planned", {}).get("observedGeneration") != 2 or found.get(
                "Ready", {}).get("status") != "True":
            return False
        mine = {d["metadata"]["name"]: d for d in deployments
                if d["metadata"]["labels"].get("agentgraph.dev/graph") == name}
        wanted = {f"{name}-{s['step']}": s["replicas"] for s in st["plan"]["steps"]}
        if set(mine) != {*wanted, f"{name}-gateway"}:
            return False
        if any(mine[d]["spec"]["replicas"] != n for d, n in wanted.items()):
            return False
    return True


def test_a_leader_killed_amid_twenty_updates_converges_without_rollback(
        kube: Kube, operator: Operator, namespace: str) -> None:
    """Twenty graphs Ready; all twenty updated (ten times the load: more replicas), and the
    operator SIGKILLed as soon as the first update is planned. Restarted, every graph
    converges on its new plan: no graph back at its old replicas, no duplicate or orphaned
    Deployment."""
    kube("label", "namespace", namespace, "agentgraph.dev/pod-runner=ready-only")
    docs = [graph(metadata={"name": f"many-{i}"}) for i in range(GRAPHS)]
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin="\n---\n".join(yaml.safe_dump(d) for d in docs))
    wait_for("twenty graphs Ready", lambda: sum(
        conditions(kube, namespace, f"many-{i}").get("Ready", {}).get("status") == "True"
        for i in range(GRAPHS)) == GRAPHS, 240)
    before = {f"many-{i}": sum(s["replicas"] for s in kube.json(
        "get", "agentgraphs.agentgraph.dev", f"many-{i}", "-n", namespace)["status"]["plan"][
        "steps"]) for i in range(GRAPHS)}
    for d in docs:
        d["spec"]["sla"]["targetRequestsPerSecond"] = 20
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin="\n---\n".join(yaml.safe_dump(d) for d in docs))

    def one_updated() -> bool:
        return any(conditions(kube, namespace, f"many-{i}").get("Planned", {}).get(
            "observedGeneration") == 2 for i in range(GRAPHS))

    wait_for("the first update planned", one_updated, 60)
    Operator.stop(operator.procs[-1], signal.SIGKILL)
    operator.start()
    wait_for("every graph on its new plan", lambda: _steps_as_planned(kube, namespace), 300)
    for name, replicas in before.items():
        plan = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)[
            "status"]["plan"]
        assert sum(s["replicas"] for s in plan["steps"]) > replicas, name  # never rolled back
    for d in kube.json("get", "deployments", "-n", namespace)["items"]:
        [owner] = d["metadata"]["ownerReferences"]
        assert owner["kind"] == "AgentGraph"


def test_an_unusable_profile_says_why(kube: Kube, operator: Operator) -> None:
    """The CRD takes it (the rule is the operator's), the operator cannot use it: its status
    says Valid=False with the field, and a Warning event says so; fixed, it turns Valid."""
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "xeon-8480.yaml").read_text())
    profile["metadata"] = {"name": "e2e-broken-cpu"}
    profile["spec"]["resourceName"] = "nvidia.com/gpu"  # a CPU profile with a GPU resource
    profile["spec"]["pool"]["nodeSelector"] = {"agentgraph.dev/pool": "e2e-none"}
    kube("apply", "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump(profile))
    try:
        def valid() -> str | None:
            obj = kube.json("get", "hardwareprofiles.agentgraph.dev", "e2e-broken-cpu")
            found = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            return found.get("Valid", {}).get("status")

        wait_for("Valid=False", lambda: valid() == "False", 30)
        obj = kube.json("get", "hardwareprofiles.agentgraph.dev", "e2e-broken-cpu")
        [cond] = obj["status"]["conditions"]
        assert "a cpu profile has resourceName 'none'" in cond["message"]
        events = [e for e in kube.json("get", "events", "-n", "default")["items"]
                  if e["involvedObject"]["name"] == "e2e-broken-cpu"]
        assert events and events[0]["type"] == "Warning" and events[0]["reason"] == "Invalid"
        profile["spec"]["resourceName"] = "none"
        kube("apply", "--server-side", "--field-manager=e2e", "-f", "-",
             stdin=yaml.safe_dump(profile))
        wait_for("Valid=True once fixed", lambda: valid() == "True", 30)
    finally:
        kube("delete", "hardwareprofiles.agentgraph.dev", "e2e-broken-cpu",
             "--ignore-not-found")
