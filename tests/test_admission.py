"""Admission through one ledger: a graph plans against the pools minus what the others hold,
its hold is recorded before its children, one that does not fit waits with its queue
position and the pools that ran out, a namespace budget is enforced, and a restarted operator
rebuilds the ledger from the statuses (the real cluster is in e2e/test_admission.py)."""

from __future__ import annotations

from typing import Any

from agentgraph.controller import admission, status
from agentgraph.controller import reconcile as rc
from agentgraph.controller.ledger import Ledger, Waiting
from builders import make_graph, make_pool, tool
from test_reconcile import FakeCluster

POOL = make_pool("p", cpu=True, cores=16, price=1.0)
NODE = {"metadata": {"name": "p-0", "labels": {"pool": "p"}}, "spec": {},
        "status": {"allocatable": {"cpu": "16", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}}
WORLD = rc.World(profiles=[POOL], nodes=[NODE])


def graph_obj(name: str, created: str, namespace: str = "ns", rate: float = 10) -> Any:
    step = tool("call", latency=0.1)
    step["tool"].update(cpuCores=6, concurrency=1)  # 2 replicas at 10/s: 12 of the 16 cores
    obj = make_graph([step], sla=1, rate=rate, name=name).model_dump(
        by_alias=True, exclude_none=True, mode="json")
    obj["metadata"].update(namespace=namespace, uid=f"uid-{name}", generation=1,
                           creationTimestamp=created)
    return obj


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_two_graphs_that_fit_alone_but_not_together_queue_then_admit() -> None:
    ledger = Ledger()
    first = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    second = FakeCluster(graph_obj("b", "2026-12-01T00:00:01Z"))
    one = rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert one.feasible and cond(one.status, "Admitted")["status"] == "True"
    assert one.status["admission"]["holds"] == [{"pool": "p", "units": 12.5, "pods": 3}]
    # the hold was written before any child
    assert first.writes.index("status") < min(i for i, w in enumerate(first.writes)
                                              if w.startswith("Deployment"))
    two = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    admitted = cond(two.status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "InsufficientCapacity")
    assert "p needs 12.5 units, 3.5 free" in admitted["message"]
    assert "queue position 1 of 1" in admitted["message"]
    assert two.status["admission"]["queuePosition"] == 1
    assert two.status["admission"]["emptyClusterCostPerHour"] > 0
    assert cond(two.status, "Infeasible")["status"] == "False"  # the spec is fine
    assert two.waiting and not two.feasible  # counted as waiting, not as planned
    assert not second.objects  # no pod of a waiting graph is created
    assert ledger.release(("ns", "a"))
    again = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert cond(again.status, "Admitted")["status"] == "True" and second.objects
    assert not ledger.waiting


def test_an_admitted_graph_keeps_its_room_when_another_arrives() -> None:
    ledger = Ledger()
    first = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    placed = first.graph_obj["status"]["plan"]
    second = FakeCluster(graph_obj("b", "2026-12-01T00:00:01Z"))
    rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    first.writes.clear()
    again = rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert first.graph_obj["status"]["plan"] == placed and not again.applied


def test_a_namespace_over_its_budget_is_not_admitted_and_told_by_how_much() -> None:
    ledger = Ledger()
    cluster = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    out = rc.reconcile(cluster, cluster.graph("ns", "a"), WORLD, ledger=ledger,  # type: ignore[arg-type]
                       budgets={"ns": 0.01})
    admitted = cond(out.status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "OverBudget")
    assert "over its budget of $0.01/hour" in admitted["message"]
    assert "agentgraph.dev/budget-per-hour" in admitted["message"] and not cluster.objects
    fine = rc.reconcile(cluster, cluster.graph("ns", "a"), WORLD, ledger=ledger,  # type: ignore[arg-type]
                        budgets={"ns": 100.0})
    assert cond(fine.status, "Admitted")["status"] == "True"
    assert fine.status["admission"]["namespaceSpendPerHour"] > 0
    assert fine.status["admission"]["namespaceBudgetPerHour"] == 100.0


def test_a_restarted_operator_rebuilds_the_ledger_from_the_statuses() -> None:
    ledger = Ledger()
    first = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    st = status.parse(first.graph_obj["status"])
    assert st.admission is not None
    from agentgraph.controller.admission import hold_from

    restarted = Ledger()
    restarted.seed([(("ns", "a"), hold_from(st.admission))])
    second = FakeCluster(graph_obj("b", "2026-12-01T00:00:01Z"))
    two = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=restarted)  # type: ignore[arg-type]
    assert cond(two.status, "Admitted")["reason"] == "InsufficientCapacity"
    assert len(restarted.holds) == 1  # nothing held twice, nothing over-committed


def test_priority_then_age_orders_the_queue() -> None:
    ledger = Ledger()
    ledger.wait(("ns", "old"), Waiting(0, "2026-12-01T00:00:00Z", "x"))
    ledger.wait(("ns", "new"), Waiting(0, "2026-12-01T00:00:09Z", "x"))
    ledger.wait(("ns", "vip"), Waiting(5, "2026-12-01T00:00:10Z", "x"))
    assert ledger.queue() == [("ns", "vip"), ("ns", "old"), ("ns", "new")]
    assert ledger.position(("ns", "new")) == 3


def test_the_gateway_needs_room_too_so_a_hold_never_exceeds_the_pool() -> None:
    """Steps that take every core leave none for the gateway: the graph waits instead of
    holding more than the pool has."""
    step = tool("call", latency=0.1)
    step["tool"].update(cpuCores=8, concurrency=1)  # 2 replicas at 10/s: all 16 cores
    obj = make_graph([step], sla=1, rate=10, name="full").model_dump(
        by_alias=True, exclude_none=True, mode="json")
    obj["metadata"].update(namespace="ns", uid="uid-full", generation=1,
                           creationTimestamp="2026-12-01T00:00:00Z")
    ledger = Ledger()
    cluster = FakeCluster(obj)
    out = rc.reconcile(cluster, cluster.graph("ns", "full"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    admitted = cond(out.status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "InsufficientCapacity")
    assert "p needs 16.5 units, 16 free" in admitted["message"]
    assert not ledger.holds and not cluster.objects


def test_a_waiting_graph_is_not_planned_again_until_something_it_depends_on_changes(
        monkeypatch: Any) -> None:
    """The resync retries every waiting graph: with the same inputs it must not solve again,
    and the first change of room (the holder leaves) must admit it."""
    ledger = Ledger()
    first = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    solves = []
    real = admission.plan_for
    monkeypatch.setattr(admission, "plan_for", lambda *a, **k: solves.append(1) or real(*a, **k))
    second = FakeCluster(graph_obj("b", "2026-12-01T00:00:01Z"))
    one = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert one.waiting and solves
    tried = len(solves)
    again = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert again.waiting and len(solves) == tried  # same inputs: same answer, no solve
    assert cond(again.status, "Admitted") == cond(one.status, "Admitted")
    assert not again.status_written
    ledger.release(("ns", "a"))
    admitted = rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert len(solves) > tried and not admitted.waiting
    assert cond(admitted.status, "Admitted")["status"] == "True"


class ManyGraphs:
    """The API calls a sweep makes, for several graphs: reads and status writes."""

    def __init__(self, *objs: Any) -> None:
        self.objs = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}
        self.reads: list[str] = []

    def graph(self, namespace: str, name: str) -> Any:
        self.reads.append(name)
        return self.objs.get((namespace, name))

    def patch_status(self, namespace: str, name: str, new: Any,
                     resource_version: str | None = None, previous: Any = None) -> None:
        self.objs[(namespace, name)]["status"] = new


def test_a_sweep_decides_newcomers_by_priority_then_age_and_records_each_decision() -> None:
    """Three newcomers of 12 cores on a 16-core pool, listed out of order: the vip (highest
    priority) is admitted, the other two queue in age order; none is admitted twice."""
    old, new, vip = (graph_obj("old", "2026-12-01T00:00:00Z"),
                     graph_obj("new", "2026-12-01T00:00:05Z"),
                     graph_obj("vip", "2026-12-01T00:00:09Z"))
    vip["spec"]["priority"] = 5
    api = ManyGraphs(old, new, vip)
    ledger = Ledger()
    arrivals = [(("ns", "new"), 0, "2026-12-01T00:00:05Z"), (("ns", "vip"), 5,
                "2026-12-01T00:00:09Z"), (("ns", "old"), 0, "2026-12-01T00:00:00Z")]
    bodies = {("ns", "old"): old}  # as its event brought it: not read again
    done = admission.sweep(api, arrivals, bodies, WORLD, ledger, {}, 30, 0.1, 0.0)  # type: ignore[arg-type]
    assert done == 3 and "old" not in api.reads
    assert list(ledger.holds) == [("ns", "vip")] and ("ns", "vip") in ledger.persisted
    assert ledger.queue() == [("ns", "old"), ("ns", "new")]
    shown = {k[1]: cond(o["status"], "Admitted") for k, o in api.objs.items()}
    assert shown["vip"]["status"] == "True" and "holds p" in shown["vip"]["message"]
    assert shown["old"]["reason"] == shown["new"]["reason"] == "InsufficientCapacity"
    assert "queue position 1 of 1" in shown["old"]["message"]  # as it stood when written
    assert "queue position 2 of 2" in shown["new"]["message"]
    assert admission.sweep(api, arrivals, {}, WORLD, ledger, {}, 30, 0.1, 0.0) == 0  # type: ignore[arg-type]


def test_an_admission_is_written_again_when_the_first_write_was_lost() -> None:
    """The hold is in the ledger but its status write failed: the graph's own reconcile writes
    it before any child is created."""
    ledger = Ledger()
    cluster = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    obj = cluster.graph("ns", "a")
    graph, _ = rc.parse_graph(obj)
    assert graph is not None
    from agentgraph.controller import replanning
    decision = admission.decide(graph, obj, WORLD, replanning.planning(graph, {}), ledger, {},
                                30, 0.1, 0.0)
    assert decision.status is not None and ("ns", "a") in ledger.holds
    assert ("ns", "a") not in ledger.persisted  # nothing written yet
    out = rc.reconcile(cluster, obj, WORLD, ledger=ledger)  # type: ignore[arg-type]
    assert cluster.writes[0] == "status" and out.feasible  # the hold first, then children
    assert ("ns", "a") in ledger.persisted


def test_a_waiting_graph_is_planned_again_when_a_profile_changes(monkeypatch: Any) -> None:
    ledger = Ledger()
    first = FakeCluster(graph_obj("a", "2026-12-01T00:00:00Z"))
    rc.reconcile(first, first.graph("ns", "a"), WORLD, ledger=ledger)  # type: ignore[arg-type]
    second = FakeCluster(graph_obj("b", "2026-12-01T00:00:01Z"))
    assert rc.reconcile(second, second.graph("ns", "b"), WORLD, ledger=ledger).waiting  # type: ignore[arg-type]
    solves = []
    real = admission.plan_for
    monkeypatch.setattr(admission, "plan_for", lambda *a, **k: solves.append(1) or real(*a, **k))
    cheaper = rc.World(profiles=[make_pool("p", cpu=True, cores=16, price=0.5)], nodes=[NODE])
    out = rc.reconcile(second, second.graph("ns", "b"), cheaper, ledger=ledger)  # type: ignore[arg-type]
    assert solves and out.waiting  # asked again (still no room), not answered from memory
