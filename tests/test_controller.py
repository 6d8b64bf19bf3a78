"""Pure controller pieces: free capacity from Nodes and Pods; status conditions."""

import pytest

from agentgraph.api.plan import Plan
from agentgraph.controller import snapshot, status
from builders import make_pool


def node(name: str, pool: str, gpus: int = 8, ready: bool = True,
         unschedulable: bool = False) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": name, "labels": {"pool": pool}},
            "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "112"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(node_name: str, gpus: int, namespace: str = "other", graph: str | None = None,
        phase: str = "Running") -> dict:  # type: ignore[type-arg]
    labels = {"agentgraph.dev/graph": graph} if graph else {}
    return {"metadata": {"namespace": namespace, "labels": labels},
            "spec": {"nodeName": node_name, "containers": [
                {"resources": {"requests": {"nvidia.com/gpu": str(gpus), "cpu": "500m"}}}]},
            "status": {"phase": phase}}


def test_quantities() -> None:
    assert snapshot.parse_quantity("500m") == 0.5
    assert snapshot.parse_quantity("64Gi") == 64 * 2**30
    assert snapshot.parse_quantity(8) == 8
    # every suffix the API server takes, which any pod in the cluster may use
    assert snapshot.parse_quantity("250u") == pytest.approx(250e-6)
    assert snapshot.parse_quantity("7n") == pytest.approx(7e-9)
    assert snapshot.parse_quantity("2P") == 2e15
    assert snapshot.parse_quantity("1E") == 1e18
    assert snapshot.parse_quantity("1e3") == 1000


def test_snapshot_survives_pods_in_any_unit() -> None:
    cpu = make_pool("cpu", cpu=True)
    odd = pod("x", 0)
    odd["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "500000u",
                                                             "memory": "1P"}
    tiny = pod("x", 0)
    tiny["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "2000000n"}
    free = snapshot.free_capacity([cpu], [node("x", "cpu")], [odd, tiny], ("ns", "g"))
    assert free == {"cpu": pytest.approx(112 - 0.5 - 0.002)}


def test_free_capacity_counts_ready_nodes_minus_other_workloads() -> None:
    gpu = make_pool("gpu")
    nodes = [node("a", "gpu"), node("b", "gpu"), node("c", "gpu", ready=False),
             node("d", "gpu", unschedulable=True), node("e", "other")]
    pods = [pod("a", 3), pod("b", 2, namespace="ns", graph="g"), pod("b", 1, phase="Succeeded")]
    free = snapshot.free_capacity([gpu], nodes, pods, ("ns", "g"))
    # a: 8 - 3; b: 8 (the graph's own pods will be replaced; finished pods hold nothing)
    assert free == {"gpu": 13.0}


def test_free_pods_are_the_node_limit_minus_other_bound_pods() -> None:
    gpu = make_pool("gpu")
    nodes = [node("a", "gpu"), node("b", "gpu"), node("c", "gpu", ready=False)]
    for n in nodes:
        n["status"]["allocatable"]["pods"] = "10"
    pods = [pod("a", 0), pod("a", 0), pod("a", 0, namespace="ns", graph="g"),
            pod("b", 0, phase="Failed")]
    # a: 10 - 2 (this graph's own pod will be replaced); b: 10 (finished pods hold no slot);
    # c is not Ready.
    assert snapshot.free_pods([gpu], nodes, pods, ("ns", "g")) == {"gpu": 18.0}


def test_cpu_pools_count_cores() -> None:
    cpu = make_pool("cpu", cpu=True)
    nodes = [node("x", "cpu")]
    free = snapshot.free_capacity([cpu], nodes, [pod("x", 0)], ("ns", "g"))
    assert free == {"cpu": 111.5}


def plan(latency: float = 1.0, sla: float = 2.0) -> Plan:
    return Plan(feasible=True, latency_seconds=latency, sla_seconds=sla, cost_per_hour=3.0)


def test_status_conditions_and_stable_transition_times() -> None:
    first = status.build(None, 1, plan(), [], ready=False, at="t1")
    by_type = {c["type"]: c for c in first["conditions"]}
    assert [c["type"] for c in first["conditions"]] == ["Infeasible", "Planned", "Ready", "SLAMet"]
    assert by_type["Planned"]["status"] == "True" and by_type["Ready"]["status"] == "False"
    assert by_type["SLAMet"]["status"] == "True"
    assert first["observedGeneration"] == 1 and first["plan"]["costPerHour"] == 3.0
    again = status.build(first, 1, plan(), [], ready=False, at="t2")
    assert not status.changed(first, again)  # nothing new: no write, times kept
    ready = status.build(first, 1, plan(), [], ready=True, at="t3")
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert times == {"Infeasible": "t1", "Planned": "t1", "Ready": "t3", "SLAMet": "t1"}


def test_infeasible_keeps_the_running_plan_and_sorts_reasons() -> None:
    good = status.build(None, 1, plan(), [], ready=True, at="t1")
    bad = status.build(good, 2, None, ["b: second", "a: first"], ready=False, at="t2")
    by_type = {c["type"]: c for c in bad["conditions"]}
    assert by_type["Infeasible"]["status"] == "True"
    assert by_type["Infeasible"]["message"] == "a: first\nb: second"
    assert by_type["Planned"]["status"] == "False" and by_type["Ready"]["status"] == "False"
    assert bad["plan"] == good["plan"]  # what runs is still shown; nothing is torn down


def test_a_rollout_is_complete_only_without_old_pods() -> None:
    from agentgraph.controller.readiness import available

    def deployment(available: int, updated: int, total: int) -> dict:  # type: ignore[type-arg]
        return {"metadata": {"generation": 2}, "spec": {"replicas": 1},
                "status": {"observedGeneration": 2, "availableReplicas": available,
                           "updatedReplicas": updated, "replicas": total}}

    assert available(deployment(1, 1, 1))
    assert not available(deployment(1, 1, 2))  # the old ReplicaSet's pod is still there
    assert not available(deployment(1, 0, 1))


def test_operator_config_defaults_and_errors_naming_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from agentgraph.controller.config import ConfigError, load

    assert load(None).resync_seconds == 60 and load(None).keep_within == 0.10
    good = tmp_path / "ok.yaml"
    good.write_text("resyncSeconds: 30\nkeepWithin: 0.2\nmetricsPort: 0\n")
    settings = load(good)
    assert (settings.resync_seconds, settings.keep_within, settings.metrics_port) == (30, 0.2, 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("resyncSecond: 30\n")  # misspelt
    with pytest.raises(ConfigError, match=r"bad.yaml: resyncSecond: Extra inputs"):
        load(bad)
    bad.write_text("resyncSeconds: 1\n")
    with pytest.raises(ConfigError, match=r"resyncSeconds: Input should be greater than or "
                                          r"equal to 5"):
        load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(bad)


def test_watch_namespaces_are_namespace_names_once_each(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agentgraph.controller.config import ConfigError, load

    settings = tmp_path / "ns.yaml"
    settings.write_text("watchNamespaces: [team-a, team-b]\nleaseNamespace: ops\n")
    loaded = load(settings)
    assert loaded.watch_namespaces == ["team-a", "team-b"]
    assert loaded.events_namespace == "ops"  # it may not write events in default
    assert load(None).watch_namespaces == [] and load(None).events_namespace == "default"
    settings.write_text("watchNamespaces: [Team_A]\n")
    with pytest.raises(ConfigError, match=r"watchNamespaces\[0\]: String should match pattern"):
        load(settings)
    settings.write_text("watchNamespaces: [a, b, a]\n")
    with pytest.raises(ConfigError, match=r"watchNamespaces: listed more than once: a"):
        load(settings)


def test_pod_entries_keep_only_what_holds_room() -> None:
    """What both the pods index and the namespaced operator's PodWatch keep of a pod."""
    bound = pod("a", 2, namespace="team", graph="g")
    bound["metadata"]["name"] = "p"
    bound["metadata"]["labels"]["agentgraph.dev/pool"] = "h100"
    bound["metadata"]["annotations"] = {"big": "x" * 1000}
    entry = snapshot.pod_entry(bound)
    assert entry == {"metadata": {"namespace": "team", "labels": {
        "agentgraph.dev/graph": "g", "agentgraph.dev/pool": "h100"}},
        "spec": {"nodeName": "a", "containers": [
            {"resources": {"requests": {"nvidia.com/gpu": "2", "cpu": "500m"}}}]},
        "status": {"phase": "Running"}}
    assert snapshot.pod_entry(pod("a", 1, phase="Succeeded")) is None  # finished
    unbound = pod("a", 1)
    unbound["spec"]["nodeName"] = None
    assert snapshot.pod_entry(unbound) is None  # pending and not ours: nowhere yet
    unbound["metadata"]["labels"] = {"agentgraph.dev/pool": "l4"}
    assert snapshot.pod_entry(unbound) is not None  # ours, on its way to pool l4
    assert snapshot.pod_entry({"metadata": {"namespace": "x"}, "spec": {"nodeName": "n"},
                               "status": None}) is not None  # sparse objects do not raise


def test_largest_free_is_the_roomiest_single_node() -> None:
    gpu = make_pool("gpu")
    nodes = [node("a", "gpu"), node("b", "gpu")]
    pods = [pod("a", 6), pod("b", 3)]
    assert snapshot.free_capacity([gpu], nodes, pods, ("ns", "g")) == {"gpu": 7.0}
    assert snapshot.largest_free([gpu], nodes, pods, ("ns", "g")) == {"gpu": 5.0}


def test_other_graphs_pods_not_yet_bound_take_from_their_pool() -> None:
    """Graphs planned at the same moment must not all see the same free room."""
    gpu = make_pool("gpu")
    nodes = [node("a", "gpu")]
    waiting = pod("", 2, namespace="ns2", graph="other")
    waiting["spec"]["nodeName"] = None
    waiting["metadata"]["labels"]["agentgraph.dev/pool"] = "gpu"
    mine = pod("", 4, namespace="ns", graph="g")
    mine["spec"]["nodeName"] = None
    mine["metadata"]["labels"]["agentgraph.dev/pool"] = "gpu"
    stranger = pod("", 1)  # not ours and not bound: nobody knows where it goes
    stranger["spec"]["nodeName"] = None
    for p in (waiting, mine, stranger):
        p["status"]["phase"] = "Pending"
    free = snapshot.free_capacity([gpu], nodes, [waiting, mine, stranger], ("ns", "g"))
    assert free == {"gpu": 6.0}
    nodes[0]["status"]["allocatable"]["pods"] = "10"
    assert snapshot.free_pods([gpu], nodes, [waiting, mine, stranger], ("ns", "g")) == \
        {"gpu": 9.0}
    # One node's largest block is what is bound there: the waiting pod has no node yet.
    assert snapshot.largest_free([gpu], nodes, [waiting], ("ns", "g")) == {"gpu": 8.0}
    # ...except in the pools the graph already runs on: there only bound pods count.
    assert snapshot.free_capacity([gpu], nodes, [waiting], ("ns", "g"),
                                  frozenset({"gpu"})) == {"gpu": 8.0}


def test_readiness_from_the_caches_says_when_a_reconcile_must_look() -> None:
    from agentgraph.controller.readiness import Readiness, check, stale
    shown = Readiness(current=True, ready=False, steps=frozenset({("g-a", 2, "p")}))
    assert check(shown, [("g-a", 2, "p", True), ("g-gateway", 1, "cpu", True)]) is True
    assert check(shown, [("g-a", 2, "p", False), ("g-gateway", 1, "cpu", True)]) is False
    assert check(shown, [("g-a", 3, "p", True)]) is None  # someone scaled it: drift
    assert check(shown, [("g-gateway", 1, "cpu", True)]) is None  # a Deployment missing
    assert check(Readiness(False, False, frozenset()), []) is None  # no plan for this spec
    assert stale([shown], [("g-a", 2, "p", True)])  # Ready should flip
    assert not stale([shown], [("g-a", 2, "p", False)])  # as shown: nothing to call
    assert stale([], [])  # not in the cache yet


def test_queued_requests_for_one_key_merge_at_the_highest_level() -> None:
    from agentgraph.controller.work import Coalescer, Level
    work = Coalescer()
    assert work.queue("g", Level.READINESS)
    assert not work.queue("g", Level.FULL) and not work.queue("g", Level.READINESS)
    assert work.dequeue("g") is Level.FULL
    assert work.queue("g", Level.READINESS)  # a new burst after it started


def test_a_status_write_removes_what_the_new_status_no_longer_has() -> None:
    """A JSON merge patch keeps every field it does not name: an admitted graph's old queue
    position, or a planned rate the replanner dropped, would stay in the status forever."""
    from agentgraph.controller.cluster import merge_patch
    old = {"admission": {"holds": [{"pool": "p"}], "queuePosition": 1},
           "replan": {"plannedRequestsPerSecond": 24.6, "mode": "auto"}, "plan": {"a": 1}}
    new = {"admission": {"holds": [{"pool": "q"}]}, "replan": {"mode": "auto"}}
    assert merge_patch(old, new) == {
        "admission": {"holds": [{"pool": "q"}], "queuePosition": None},
        "replan": {"mode": "auto", "plannedRequestsPerSecond": None}, "plan": None}
    assert merge_patch({}, new) == new


def test_reconcile_error_is_shown_until_a_full_reconcile_goes_through() -> None:
    good = status.build(None, 3, plan(), [], True, at="t0")
    assert status.condition_status(good, "ReconcileError") is None  # never failed: absent
    failed = status.with_error(good, "full reconcile failed: ApiException: denied", 3, at="t1")
    assert status.condition_status(failed, "ReconcileError") == "True"
    assert status.condition_message(failed, "ReconcileError").endswith("denied")
    assert failed["plan"] == good["plan"]  # the last good plan stays
    assert status.condition_status(failed, "Ready") == "True"
    again = status.build(failed, 3, plan(), [], True, at="t2")
    [cond] = [c for c in again["conditions"] if c["type"] == "ReconcileError"]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == (
        "False", "Reconciled", "t2")


def test_a_profile_status_says_whether_it_can_be_used() -> None:
    bad = status.profile_status(None, ["HardwareProfile/x: spec: a cpu profile has "
                                       "resourceName 'none'"], 2, at="t1")
    [cond] = bad["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Valid", "False", "Invalid")
    assert "resourceName 'none'" in cond["message"] and bad["observedGeneration"] == 2
    assert not status.changed(bad, status.profile_status(bad, [
        "HardwareProfile/x: spec: a cpu profile has resourceName 'none'"], 2, at="t2"))
    fixed = status.profile_status(bad, [], 3, at="t3")
    [cond] = fixed["conditions"]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("True", "Valid",
                                                                             "t3")


def test_a_profile_with_the_status_the_operator_wrote_is_still_usable() -> None:
    from agentgraph.controller import profiles

    raw = make_pool("gpu").model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["metadata"]["resourceVersion"] = "7"
    raw["status"] = status.profile_status(None, [], 1, at="t")
    assert profiles.problems(raw) == []
    good, bad = profiles.validated([raw])
    assert [p.name for p in good] == ["gpu"] and bad == []


def test_a_graph_created_again_under_its_name_is_planned_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The FULL trigger is (uid, generation): our own status writes trigger nothing, a new
    spec does, and so does a new graph of the same name at the generation last seen (its
    DELETED event lost to an expired watch)."""
    import asyncio

    from agentgraph.controller import operator as op
    from agentgraph.controller.state import STATE
    from agentgraph.controller.work import Level

    calls: list[tuple[str, str, Level]] = []
    monkeypatch.setattr(op, "_submit", lambda ns, name, level, _: calls.append((ns, name, level)))
    monkeypatch.setattr(STATE, "generations", {})

    def event(uid: str, generation: int) -> None:
        asyncio.run(op.on_graph_event({"type": "MODIFIED"}, "ns", "g",  # type: ignore[arg-type]
                                      {"metadata": {"uid": uid, "generation": generation}},
                                      placed={}, deployments={}))

    event("a", 1)
    event("a", 1)  # a status write: same spec
    assert calls == [("ns", "g", Level.FULL)]
    event("a", 2)
    event("b", 2)  # deleted and created again, at the number last seen
    assert calls == [("ns", "g", Level.FULL)] * 3


def test_the_start_up_listing_reconciles_no_graph(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """kopf lists every Node and HardwareProfile at start-up (events of type None): each graph
    is reconciled on first sight anyway, so none of them asks for another. Later events do:
    a node changing its pool's labels replans the graphs on that pool, a profile's new spec
    every graph, and its status write (the same generation) nothing."""
    import asyncio

    from agentgraph.controller import operator as op
    from agentgraph.controller.state import STATE
    from agentgraph.controller.work import Level
    from builders import make_pool

    calls: list[tuple[str, str, Level]] = []
    monkeypatch.setattr(op, "_submit", lambda ns, name, level, _: calls.append((ns, name, level)))
    monkeypatch.setattr(op, "_dispatch", lambda fn, *args: None)  # no status writes here
    monkeypatch.setattr(STATE, "fingerprints", {})
    monkeypatch.setattr(STATE, "profile_generations", {})
    monkeypatch.setattr(STATE, "started", True)
    profile = make_pool("gpu").model_dump(by_alias=True, mode="json")
    profile["metadata"]["generation"] = 1
    graphs = {("ns", "a"): [{"gpu"}], ("ns", "b"): [{"cpu"}]}

    def node(event: str | None, labels: dict[str, str]) -> None:
        body = {"metadata": {"name": "n1", "labels": labels}, "status": {}}
        asyncio.run(op.on_node({"type": event}, body,  # type: ignore[arg-type]
                               profiles={"gpu": [profile]}, graphs=graphs))

    def profile_event(event: str | None, generation: int) -> None:
        profile["metadata"]["generation"] = generation
        asyncio.run(op.on_profile({"type": event}, profile,  # type: ignore[arg-type]
                                  graphs=graphs))

    node(None, {"pool": "gpu"})
    profile_event(None, 1)
    for i in range(10):  # the rest of a big listing
        asyncio.run(op.on_node({"type": None},  # type: ignore[arg-type]
                               {"metadata": {"name": f"x{i}", "labels": {}}, "status": {}},
                               profiles={"gpu": [profile]}, graphs=graphs))
    assert calls == []
    node("MODIFIED", {"pool": "elsewhere"})  # left the gpu pool
    assert calls == [("ns", "a", Level.FULL)]
    profile_event("MODIFIED", 1)  # our own status write
    assert calls == [("ns", "a", Level.FULL)]
    profile_event("MODIFIED", 2)
    assert sorted(calls[1:]) == [("ns", "a", Level.FULL), ("ns", "b", Level.FULL)]
