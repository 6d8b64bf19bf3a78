"""Plan -> Kubernetes objects: pool pinning, devices, labels, owners, stable output; the workers'
configuration, the gateway and its least-privilege access."""

import json
import re
from typing import Any

import pytest

from agentgraph.api.loading import parse
from agentgraph.api.naming import LABEL_COMPONENT, gateway_name, runtime_config_name
from agentgraph.api.runtime import CONFIG_KEY, WORKER_CONFIG_ENV, RuntimeGraph, WorkerConfig
from agentgraph.controller import render
from agentgraph.planner import solve
from builders import EXAMPLES_DIR, make_graph, shipped_profiles, tool

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def rendered() -> tuple:  # type: ignore[type-arg]
    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "voice").graphs[0]
    profiles = {p.name: p for p in shipped_profiles()}
    plan = solve.plan(graph, list(profiles.values()))
    assert plan.feasible
    return graph, plan, profiles, render.render(graph, plan, profiles, "demo", "uid-1")


def _kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _steps(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _kind(objs, "Deployment")
            if o["metadata"]["name"] != gateway_name("voice-agent")}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_deployment_per_step_phase_plus_the_gateway(rendered: tuple) -> None:  # type: ignore[type-arg]
    graph, plan, profiles, objs = rendered
    assert len(_kind(objs, "Deployment")) == len(plan.assignments) + 1
    assert [o["metadata"]["name"] for o in _kind(objs, "Service")] == [
        gateway_name("voice-agent")]  # the gateway routes to the step pods itself
    runtime = graph.spec.runtime.model_copy(update={"step_services": True})  # asked for
    asked = graph.model_copy(update={"spec": graph.spec.model_copy(update={"runtime": runtime})})
    with_services = render.render(asked, plan, profiles, "demo", "uid-1")
    assert len(_kind(with_services, "Service")) == len(plan.assignments) + 1
    assert {o["metadata"]["name"] for o in _kind(with_services, "Service")} == {
        o["metadata"]["name"] for o in _kind(with_services, "Deployment")}
    assert [o["kind"] for o in objs][:4] == ["ConfigMap", "ServiceAccount", "Role",
                                             "RoleBinding"]  # what the gateway needs, first
    for o in objs:
        assert DNS1123.match(o["metadata"]["name"]) and len(o["metadata"]["name"]) <= 63


def test_pods_are_pinned_to_the_planned_pool(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, profiles, objs = rendered
    by_name = _steps(objs)
    for a in plan.assignments:
        d = by_name[render.object_name("voice-agent", a.step, a.phase)]
        pod = d["spec"]["template"]["spec"]
        pool = profiles[a.pool].spec.pool
        assert pod["nodeSelector"] == pool.node_selector
        assert {t["key"] for t in pod["tolerations"]} == {t.key for t in pool.taints}
        assert d["spec"]["replicas"] == a.replicas
        requests = pod["containers"][0]["resources"]["requests"]
        resource = profiles[a.pool].spec.resource_name
        if resource != "none" and a.units_per_replica >= 1:
            assert requests[resource] == str(a.tensor_parallel)
        else:
            assert resource not in requests


def test_step_pods_run_the_reference_worker_with_its_configuration(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, _, objs = rendered
    by_name = _steps(objs)
    for a in plan.assignments:
        d = by_name[render.object_name("voice-agent", a.step, a.phase)]
        template = d["spec"]["template"]
        [container] = template["spec"]["containers"]
        assert container["image"] == render.RUNTIME_IMAGE
        assert container["command"] == ["agentgraph"]
        config = WorkerConfig.model_validate_json(_env(container)[WORKER_CONFIG_ENV])
        assert container["args"] == ["worker", "--kind", config.kind.value, "--phase",
                                     a.phase or "run"]
        assert (config.step, config.pool, config.tensor_parallel, config.batch) == (
            a.step, a.pool, a.tensor_parallel, a.batch)
        assert config.profile.spec.sources == {}  # the worker needs the figures, not the notes
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {p["name"] for p in container["ports"]} == {"http", "metrics"}
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert template["metadata"]["labels"][LABEL_COMPONENT] == "worker"
        assert template["spec"]["automountServiceAccountToken"] is False
    reason = WorkerConfig.model_validate_json(_env(by_name["voice-agent-reason-decode"]["spec"][
        "template"]["spec"]["containers"][0])[WORKER_CONFIG_ENV])
    assert reason.loop is not None and reason.loop.max_iterations == 4  # it heads the loop


def test_the_gateway_reads_only_its_pods_and_its_configmap(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, profiles, objs = rendered
    [role] = _kind(objs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": [runtime_config_name("voice-agent")],
         "verbs": ["get", "list", "watch"]}]
    [binding] = _kind(objs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": gateway_name("voice-agent"), "namespace": "demo"}]
    gateway = next(o for o in _kind(objs, "Deployment")
                   if o["metadata"]["name"] == gateway_name("voice-agent"))
    pod = gateway["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == gateway_name("voice-agent")
    assert pod["containers"][0]["args"] == ["gateway", "--graph", "voice-agent"]
    cpu_pools = {p.name for p in profiles.values() if p.spec.device_type.value == "cpu"}
    used = {a.pool for a in plan.assignments} & cpu_pools
    assert pod["nodeSelector"]["agentgraph.dev/pool"] in used  # next to the steps, on a CPU


def test_the_runtime_configmap_is_the_graph_as_executed(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, _, objs = rendered
    [cm] = _kind(objs, "ConfigMap")
    graph = RuntimeGraph.model_validate_json(cm["data"][CONFIG_KEY])
    assert graph.sla_seconds == 4.0 and graph.request_timeout_seconds >= 8.0
    [loop] = [b.loop for b in graph.blocks if b.loop]
    assert loop.heads == ["reason"] and loop.max_iterations == 4
    assert graph.sinks == ["speak"]
    reason = next(s for s in graph.steps if s.name == "reason")
    assert [p.phase for p in reason.phases] == ["prefill", "decode"]
    decode = reason.phases[1]
    transfer = sum(t.latency_seconds for t in plan.transfers if t.step == "reason")
    planned = next(a for a in plan.assignments if a.step == "reason" and a.phase == "decode")
    assert decode.predicted_seconds == pytest.approx(planned.latency_seconds + transfer)


def test_selector_leaves_out_the_pool_so_moves_roll_over(rendered: tuple) -> None:  # type: ignore[type-arg]
    for o in _kind(rendered[3], "Deployment"):
        assert render.LABEL_POOL not in o["spec"]["selector"]["matchLabels"]
        assert o["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_children_carry_only_our_labels_and_an_owner(rendered: tuple) -> None:  # type: ignore[type-arg]
    for o in rendered[3]:
        labels = o["metadata"]["labels"]
        ours = ("agentgraph.dev/", "app.kubernetes.io/managed-by")
        assert all(k.startswith(ours) for k in labels)
        [owner] = o["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("AgentGraph", "uid-1", True)


def test_rendering_is_deterministic(rendered: tuple) -> None:  # type: ignore[type-arg]
    graph, plan, profiles, objs = rendered
    again = render.render(graph, plan, profiles, "demo", "uid-1")
    assert json.dumps(again, sort_keys=True) == json.dumps(objs, sort_keys=True)


def test_a_steps_own_container_keeps_its_image_and_args() -> None:
    profiles = {p.name: p for p in shipped_profiles()}
    graph = make_graph([tool("search", container={"image": "example.com/search:1",
                                                   "args": ["--fast"], "port": 9000})])
    plan = solve.plan(graph, list(profiles.values()))
    objs = render.render(graph, plan, profiles, "ns", "uid")
    step = next(o for o in _kind(objs, "Deployment") if o["metadata"]["name"] == "g-search")
    template = step["spec"]["template"]
    [container] = template["spec"]["containers"]
    assert (container["image"], container["args"]) == ("example.com/search:1", ["--fast"])
    assert "command" not in container and WORKER_CONFIG_ENV in _env(container)
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9000"


def test_a_profiles_slowdown_annotation_reaches_its_emulated_workers() -> None:
    profiles = {p.name: p for p in shipped_profiles()}
    slow = profiles["epyc-9654"].model_copy(update={"metadata": profiles[
        "epyc-9654"].metadata.model_copy(update={"annotations": {
            render.SLOWDOWN_ANNOTATION: "2.5"}})})
    profiles["epyc-9654"] = slow
    graph = make_graph([tool("search", constraints={"pinnedPool": "epyc-9654"})])
    plan = solve.plan(graph, list(profiles.values()))
    objs = render.render(graph, plan, profiles, "ns", "uid")
    step = next(o for o in _kind(objs, "Deployment") if o["metadata"]["name"] == "g-search")
    config = WorkerConfig.model_validate_json(
        _env(step["spec"]["template"]["spec"]["containers"][0])[WORKER_CONFIG_ENV])
    assert config.slowdown == 2.5


def test_long_names_are_shortened_stably() -> None:
    long = "x" * 80
    name = render.object_name("graph", long, "decode")
    assert len(name) <= 63 and DNS1123.match(name)
    assert name == render.object_name("graph", long, "decode")
    assert name != render.object_name("graph", long, "prefill")


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, _, _, objs = rendered
    for d in _kind(objs, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            res = c["resources"]
            assert set(res["limits"]) >= {"cpu", "memory"}
            if d["metadata"]["name"] != gateway_name("voice-agent"):
                assert res["limits"] == res["requests"]  # Guaranteed: what the plan sized
        if d["metadata"]["name"] != gateway_name("voice-agent"):
            assert pod["automountServiceAccountToken"] is False


def test_pod_memory_comes_from_the_step() -> None:
    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "voice").graphs[0]
    steps = {s.name: s for s in graph.spec.steps}
    assert render.memory_gib(steps["reason"]) == 0.5  # an emulator or adapter, not the weights
    assert render.memory_gib(steps["embed"]) == pytest.approx(0.5 + 0.0227 * 2)
    tool_step = make_graph([tool("t", tool={"latencySeconds": 0.1, "memoryGB": 3})])
    assert render.memory_gib(tool_step.spec.steps[0]) == 3


def test_secrets_reach_the_pod_by_reference_only() -> None:
    step = tool("search", container={
        "valueFrom": {"SEARCH_API_KEY": {"secretKeyRef": {"name": "search", "key": "api-key"}},
                      "REGION": {"configMapKeyRef": {"name": "settings", "key": "region",
                                                     "optional": True}}},
        "envFrom": [{"secretRef": {"name": "more-keys"}, "prefix": "EXTRA_"}],
        "imagePullSecrets": ["regcred"], "env": {"LOG_LEVEL": "info"}})
    graph = make_graph([step])
    profiles = {p.name: p for p in shipped_profiles()}
    plan = solve.plan(graph, list(profiles.values()))
    [deployment] = [o for o in render.render(graph, plan, profiles, "demo", "uid-1")
                    if o["kind"] == "Deployment" and o["metadata"]["name"] == "g-search"]
    pod = deployment["spec"]["template"]["spec"]
    [main] = pod["containers"]
    assert main["image"] == render.RUNTIME_IMAGE  # no image given: the reference worker
    env = {e["name"]: e for e in main["env"]}
    assert env["SEARCH_API_KEY"] == {"name": "SEARCH_API_KEY", "valueFrom": {
        "secretKeyRef": {"name": "search", "key": "api-key"}}}
    assert env["REGION"]["valueFrom"] == {"configMapKeyRef": {
        "name": "settings", "key": "region", "optional": True}}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}
    assert main["envFrom"] == [{"secretRef": {"name": "more-keys"}, "prefix": "EXTRA_"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize(("container", "expected"), [
    ({"valueFrom": {"K": {}}}, "give exactly one of secretKeyRef and configMapKeyRef"),
    ({"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]},
     "give exactly one of secretRef and configMapRef"),
    ({"args": ["--x"]}, "args and port belong to a step's own image"),
    ({"env": {"A=B": "x"}}, "env: ['A=B'] are not environment variable names"),
    ({"env": {"K": "x"}, "valueFrom": {"K": {"secretKeyRef": {"name": "s", "key": "k"}}}},
     "['K'] are in both env and valueFrom"),
    ({"env": {"POD_IP": "1.2.3.4"}, "valueFrom": {"AGENTGRAPH_STEP": {"secretKeyRef": {
        "name": "s", "key": "k"}}}}, "['AGENTGRAPH_STEP', 'POD_IP'] are set by the operator"),
])
def test_bad_container_env_names_the_problem(container: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        make_graph([tool("t", container=container)])
