"""The joint re-planning report on a live cluster (``agentgraph joint``): every admitted graph
planned at once on the shared pools (planner/joint.py), against the first-come plans they hold.
Advisory: it reads the cluster and writes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentgraph.api.status import AgentGraphStatus
from agentgraph.controller import admission, reconcile, replanning, snapshot, status
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.ledger import Hold, Key
from agentgraph.controller.planning import World, parse_graph, sized
from agentgraph.controller.profiles import validated
from agentgraph.planner import joint

Obj = Mapping[str, Any]


def read(cluster: Cluster) -> tuple[list[dict[str, Any]], World]:
    """Every AgentGraph, and the Nodes, Pods and HardwareProfiles of the cluster."""
    good, bad = validated(cluster.list_all("hardwareprofiles"))
    return cluster.list_all("agentgraphs"), World(
        profiles=good, bad_profiles=bad, nodes=cluster.list_all("nodes"),
        pods=cluster.list_all("pods"))


def _step_usage(st: AgentGraphStatus) -> tuple[dict[str, float], dict[str, float]]:
    units: dict[str, float] = {}
    pods: dict[str, float] = {}
    for s in st.plan.steps if st.plan else []:
        units[s.pool] = units.get(s.pool, 0.0) + s.replicas * s.units_per_replica
        pods[s.pool] = pods.get(s.pool, 0.0) + s.replicas
    return units, pods


def report(graphs: Sequence[Obj], world: World, time_limit: float = 60.0) -> joint.Report:
    """Members: the admitted graphs with a plan. The room they share: the pools as if none of
    them ran, less what stays put (their gateways, and the holds of graphs left out)."""
    members: list[joint.Member] = []
    holders: set[Key] = set()
    fixed_units: dict[str, float] = {}
    fixed_pods: dict[str, float] = {}
    left_out: list[tuple[str, str]] = []

    def keep(units: Mapping[str, float], pods: Mapping[str, float]) -> None:
        for pool, amount in units.items():
            fixed_units[pool] = fixed_units.get(pool, 0.0) + amount
        for pool, amount in pods.items():
            fixed_pods[pool] = fixed_pods.get(pool, 0.0) + amount

    for obj in graphs:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        st = status.parse(obj.get("status"))
        if st.admission is None or not st.admission.holds:
            continue  # waiting, or never admitted: holds nothing
        holders.add(key)
        hold: Hold = admission.hold_from(st.admission)
        graph, problems = parse_graph(obj)
        planned = status.condition_status(obj.get("status") or {}, "Planned") == "True"
        if graph is None or not planned or st.plan is None:
            keep(hold.units, hold.pods)
            left_out.append((f"{key[0]}/{key[1]}", "; ".join(problems) or "no current plan"))
            continue
        steps_units, steps_pods = _step_usage(st)
        keep({p: u - steps_units.get(p, 0.0) for p, u in hold.units.items()},  # its gateway
             {p: n - steps_pods.get(p, 0.0) for p, n in hold.pods.items()})
        measured = replanning.planning(graph, obj.get("status"))
        members.append(joint.Member(
            key=f"{key[0]}/{key[1]}", graph=sized(graph, measured.rate),
            first_come=hold.cost_per_hour, corrections=measured.corrections,
            placed=reconcile.placement((obj.get("status") or {}).get("plan") or {})))
    skip = frozenset(holders)
    free = snapshot.admission_free(world.profiles, world.nodes, world.pods, ("", ""), skip)
    units, pods = snapshot.admission_capacity(free, fixed_units, fixed_pods)
    block = snapshot.largest_free(world.profiles, world.nodes, world.pods, ("", ""), skip)
    out = joint.plan_jointly(members, world.profiles, capacity_units=units, capacity_pods=pods,
                             capacity_block=block, time_limit=time_limit)
    return joint.Report(out.rows, left_out + out.left_out, out.status, out.seconds)
