"""The reconcile's logic against an in-memory API (the real one is in e2e/): unchanged children
are not rewritten, readiness follows the Deployments without replanning, drift escalates, one
reconcile runs per graph at a time, and a running placement is kept unless moving pays."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from agentgraph.api.hardware import DeviceType
from agentgraph.api.loading import parse
from agentgraph.controller import reconcile as rc
from agentgraph.controller import render, status
from agentgraph.controller.work import Coalescer, Level
from agentgraph.planner import solve
from builders import EXAMPLES_DIR, shipped_profiles

Obj = dict[str, Any]
VOICE = (EXAMPLES_DIR / "voice-agent.yaml").read_text()


def _drop_empty(obj: Any) -> Any:
    """What the API server stores: empty lists and maps are omitted."""
    if isinstance(obj, dict):
        return {k: _drop_empty(v) for k, v in obj.items() if v not in ([], {}, None)}
    if isinstance(obj, list):
        return [_drop_empty(v) for v in obj]
    return obj


class FakeCluster:
    """The calls reconcile() makes, kept in dicts; writes are counted."""

    def __init__(self, graph: Obj) -> None:
        self.graph_obj = graph
        self.objects: dict[tuple[str, str], Obj] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []

    def graph(self, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self.graph_obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    def children(self, namespace: str, graph: str,
                 kinds: tuple[str, ...] | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for (kind, _), o in self.objects.items()
                if kinds is None or kind in kinds]

    def apply(self, manifest: Obj) -> Obj:
        key = (manifest["kind"], manifest["metadata"]["name"])
        old = self.objects.get(key)
        stored = _drop_empty(copy.deepcopy(manifest))
        def body(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        generation = 1 if old is None else old["metadata"]["generation"] + (
            body(old) != body(stored))
        stored["metadata"]["generation"] = generation
        stored["status"] = old.get("status", {}) if old else {}
        self.objects[key] = stored
        self.writes.append("/".join(key))
        return copy.deepcopy(stored)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, name), None)
        self.writes.append(f"delete {kind}/{name}")

    def patch_status(self, namespace: str, name: str, new: Obj,
                     resource_version: str | None = None, previous: Any = None) -> None:
        self.graph_obj["status"] = copy.deepcopy(new)
        self.writes.append("status")

    def event(self, graph: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    def roll_out(self) -> None:
        """The Deployment controller and the pods catching up."""
        for (kind, _), obj in self.objects.items():
            if kind == "Deployment":
                n = obj["spec"]["replicas"]
                obj["status"] = {"replicas": n, "updatedReplicas": n, "availableReplicas": n,
                                 "observedGeneration": obj["metadata"]["generation"]}


def world() -> rc.World:
    """Four Ready nodes per shipped profile, nothing else running."""
    profiles = shipped_profiles()
    nodes = []
    for p in profiles:
        cpu = p.spec.device_type is DeviceType.CPU
        per_node = p.spec.pool.devices_per_node
        allocatable = {"cpu": str(int(p.spec.cores * (1 if cpu else per_node))),
                       "pods": "110"}
        if not cpu:
            allocatable[p.spec.resource_name] = str(per_node)
        for i in range(4):
            nodes.append({"metadata": {"name": f"{p.name}-{i}",
                                       "labels": dict(p.spec.pool.node_selector)},
                          "spec": {}, "status": {"allocatable": allocatable, "conditions": [
                              {"type": "Ready", "status": "True"}]}})
    return rc.World(profiles=profiles, nodes=nodes)


@pytest.fixture()
def cluster() -> FakeCluster:
    graph = parse(VOICE, "voice").graphs[0]
    obj = graph.model_dump(by_alias=True, exclude_none=True, mode="json")
    obj["metadata"].update(namespace="demo", uid="uid-1", generation=1)
    return FakeCluster(obj)


def test_an_unchanged_plan_rewrites_nothing(cluster: FakeCluster) -> None:
    w = world()
    first = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), w)  # type: ignore[arg-type]
    assert first.feasible and not first.ready and first.status_written
    # 7 step phases' Deployments; the gateway's Deployment, Service, ServiceAccount, Role and
    # RoleBinding; the runtime ConfigMap
    assert len(first.applied) == len(cluster.objects) == 7 + 6
    cluster.writes.clear()
    again = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), w)  # type: ignore[arg-type]
    assert again.applied == [] and again.deleted == [] and not again.status_written
    assert cluster.writes == []


def test_readiness_follows_the_deployments_without_replanning(cluster: FakeCluster) -> None:
    rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    plan_before = cluster.graph_obj["status"]["plan"]
    cluster.roll_out()
    cluster.writes.clear()
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"),  # type: ignore[arg-type]
                       rc.World(profiles=[]), Level.READINESS)  # no planning input needed
    assert out.ready and out.status_written and not out.escalate
    assert cluster.writes == ["status"]
    assert cluster.graph_obj["status"]["plan"] == plan_before
    assert ("Ready", "every step has all its replicas available") in cluster.events
    assert status.condition_status(cluster.graph_obj["status"], "Ready") == "True"


def test_drift_escalates_and_full_mends_only_the_drifted_child(cluster: FakeCluster) -> None:
    w = world()
    rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), w)  # type: ignore[arg-type]
    name = render.object_name("voice-agent", "embed", None)
    cluster.objects[("Deployment", name)]["spec"]["replicas"] = 5  # someone scaled it
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), w,  # type: ignore[arg-type]
                       Level.READINESS)
    assert out.escalate and not out.status_written
    full = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), w)  # type: ignore[arg-type]
    assert full.applied == [f"Deployment/{name}"]
    gateway = render.gateway_name("voice-agent")
    del cluster.objects[("Service", gateway)]  # someone deleted one
    assert rc.reconcile(cluster, cluster.graph("demo", "voice-agent"),  # type: ignore[arg-type]
                        w).applied == [f"Service/{gateway}"]


def test_readiness_before_a_plan_for_this_spec_escalates(cluster: FakeCluster) -> None:
    rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    cluster.graph_obj["metadata"]["generation"] = 2  # a new spec, not planned yet
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"),  # type: ignore[arg-type]
                       rc.World(profiles=[]), Level.READINESS)
    assert out.escalate and cluster.writes.count("status") == 1


def test_contains_ignores_server_defaults_and_omitted_empties() -> None:
    live = {"spec": {"replicas": 2, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "a", "image": "x",
                                                           "imagePullPolicy": "Always"}]}}}}
    assert rc.contains(live, {"spec": {"replicas": 2, "template": {"spec": {
        "tolerations": [], "containers": [{"name": "a", "image": "x", "args": []}]}}}})
    assert not rc.contains(live, {"spec": {"replicas": 3}})
    assert not rc.contains(live, {"spec": {"template": {"spec": {"containers": [
        {"name": "a"}, {"name": "b"}]}}}})
    assert not rc.contains(live, {"spec": {"paused": True}})


def test_memory_quantities_are_rendered_in_canonical_form() -> None:
    assert render._quantity_memory(0.5) == "512Mi"
    assert render._quantity_memory(2) == "2Gi"
    assert render._quantity_memory(1.25) == "1280Mi"


def test_current_placement_only_for_the_spec_it_was_planned_for() -> None:
    previous = status.build(None, 3, solve.plan(parse(VOICE, "v").graphs[0], shipped_profiles()),
                            [], False)
    placed = rc.current_placement(previous, 3)
    assert placed is not None and len(placed) == len(previous["plan"]["steps"])
    assert rc.current_placement(previous, 4) is None
    del previous["plan"]["steps"][0]["batch"]  # written by an older operator
    assert rc.current_placement(previous, 3) is None


def test_coalescer_runs_one_at_a_time_and_once_more_at_the_highest_level() -> None:
    work = Coalescer()
    entered, release = threading.Event(), threading.Event()
    runs: list[Level] = []

    def job(level: Level) -> None:
        runs.append(level)
        if len(runs) == 1:
            entered.set()
            release.wait(5)

    first = threading.Thread(target=lambda: work.run("g", Level.READINESS, job))
    first.start()
    assert entered.wait(5)
    # Three triggers while the first run is inside: none runs itself, one more run follows.
    assert not work.run("g", Level.READINESS, job)
    assert not work.run("g", Level.FULL, job)
    assert not work.run("g", Level.READINESS, job)
    assert work.run("other", Level.FULL, lambda _: None)  # other keys are not held up
    release.set()
    first.join(5)
    assert runs == [Level.READINESS, Level.FULL]
    assert work.busy() == 0


def test_coalescer_forgets_a_key_whose_work_failed() -> None:
    work = Coalescer()

    def boom(_: Level) -> None:
        raise RuntimeError("api down")

    with pytest.raises(RuntimeError):
        work.run("g", Level.FULL, boom)
    assert work.busy() == 0 and work.run("g", Level.FULL, lambda _: None)


def test_an_object_we_did_not_create_is_never_taken_over(cluster: FakeCluster) -> None:
    theirs = {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": "voice-agent-gateway", "namespace": "demo",
                           "labels": {"app": "mine"}}, "spec": {"ports": [{"port": 80}]}}
    cluster.objects[("Service", "voice-agent-gateway")] = copy.deepcopy(theirs)
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    assert not out.feasible and out.applied == [] and out.deleted == []
    assert cluster.objects == {("Service", "voice-agent-gateway"): theirs}
    st = cluster.graph_obj["status"]
    assert status.condition_status(st, "Infeasible") == "True"
    assert ("Service/voice-agent-gateway: exists in namespace demo and is not this graph's"
            in status.condition_message(st, "Infeasible"))
    del cluster.objects[("Service", "voice-agent-gateway")]  # the user gives the name up
    again = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    assert again.feasible and len(again.applied) == 13


def test_a_graph_blocked_by_someone_elses_object_gives_its_hold_back(
        cluster: FakeCluster) -> None:
    """Admitted, then blocked by a user's object of the same name before anything of it
    exists: the room it was given goes back, and it is not admitted again (a hold taken and
    given back on every resync) until the name is free."""
    from agentgraph.controller.ledger import Ledger

    ledger = Ledger()
    cluster.objects[("Service", "voice-agent-gateway")] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "voice-agent-gateway", "namespace": "demo"}}
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world(),  # type: ignore[arg-type]
                       ledger=ledger)
    assert not out.feasible and out.applied == []
    assert ("demo", "voice-agent") not in ledger.holds
    st = cluster.graph_obj["status"]
    assert st["admission"].get("holds", []) == []  # a restart seeds no hold from it either
    assert status.condition_status(st, "Admitted") == "False"
    assert "voice-agent-gateway" in status.condition_message(st, "Infeasible")
    writes = len(cluster.writes)
    again = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world(),  # type: ignore[arg-type]
                         ledger=ledger)
    assert not again.feasible and ("demo", "voice-agent") not in ledger.holds
    assert len(cluster.writes) == writes  # not admitted and given back again: nothing written
    del cluster.objects[("Service", "voice-agent-gateway")]  # the user gives the name up
    free = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world(),  # type: ignore[arg-type]
                        ledger=ledger)
    assert free.feasible and len(free.applied) == 13
    assert ("demo", "voice-agent") in ledger.holds and not ledger.blocked
    assert status.condition_status(cluster.graph_obj["status"], "Admitted") == "True"


def test_prune_leaves_what_only_wears_our_labels(cluster: FakeCluster) -> None:
    rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    lookalike = copy.deepcopy(cluster.objects[("Deployment", "voice-agent-embed")])
    lookalike["metadata"]["name"] = "voice-agent-old"
    lookalike["metadata"]["ownerReferences"] = []  # labels copied, never owned by the graph
    cluster.objects[("Deployment", "voice-agent-old")] = lookalike
    out = rc.reconcile(cluster, cluster.graph("demo", "voice-agent"), world())  # type: ignore[arg-type]
    assert out.deleted == [] and ("Deployment", "voice-agent-old") in cluster.objects
