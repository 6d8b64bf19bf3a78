"""Plan -> Deployments and Services: pool pinning, devices, labels, owners, stable output."""

import re

import pytest

from agentgraph.api.loading import parse
from agentgraph.controller import render
from agentgraph.planner import solve
from builders import EXAMPLES_DIR, shipped_profiles

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def rendered() -> tuple:  # type: ignore[type-arg]
    graph = parse((EXAMPLES_DIR / "voice-agent.yaml").read_text(), "voice").graphs[0]
    profiles = {p.name: p for p in shipped_profiles()}
    plan = solve.plan(graph, list(profiles.values()))
    assert plan.feasible
    return graph, plan, profiles, render.render(graph, plan, profiles, "demo", "uid-1")


def test_one_deployment_and_service_per_step_phase(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, _, objs = rendered
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    services = [o for o in objs if o["kind"] == "Service"]
    assert len(deployments) == len(services) == len(plan.assignments)
    for o in objs:
        assert DNS1123.match(o["metadata"]["name"]) and len(o["metadata"]["name"]) <= 63


def test_pods_are_pinned_to_the_planned_pool(rendered: tuple) -> None:  # type: ignore[type-arg]
    _, plan, profiles, objs = rendered
    by_name = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
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


def test_selector_leaves_out_the_pool_so_moves_roll_over(rendered: tuple) -> None:  # type: ignore[type-arg]
    for o in rendered[3]:
        if o["kind"] == "Deployment":
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
    assert render.render(graph, plan, profiles, "demo", "uid-1") == objs


def test_long_names_are_shortened_stably() -> None:
    long = "x" * 80
    name = render.object_name("graph", long, "decode")
    assert len(name) <= 63 and DNS1123.match(name)
    assert name == render.object_name("graph", long, "decode")
    assert name != render.object_name("graph", long, "prefill")
