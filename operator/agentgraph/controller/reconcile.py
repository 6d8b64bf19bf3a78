"""One level-based reconcile for create, update, resume, the resync loop and cluster changes.

FULL: snapshot -> plan (keeping the running placement unless it no longer fits or moving saves
      enough) -> render -> server-side apply of what differs -> prune -> status on change.
READINESS: a child's status moved. Ready is recomputed from the Deployments the status plan
      names; anything unexpected there (a child missing, replicas or pool changed by someone
      else) escalates to FULL. Pod-template drift is undone by the next FULL (the resync).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgraph.api.plan import Plan
from agentgraph.api.status import Admission, Reason
from agentgraph.controller import admission, render, replanning, status
from agentgraph.controller.cluster import CHILD_KINDS, Cluster
from agentgraph.controller.ledger import Ledger
from agentgraph.controller.planning import World, current_placement, parse_graph, plan_for
from agentgraph.controller.readiness import available
from agentgraph.controller.work import Level
from agentgraph.planner import solve
from agentgraph.planner.errors import PlanningError

__all__ = ["Outcome", "World", "contains", "current_placement", "moves", "reconcile"]

log = logging.getLogger("agentgraph.reconcile")
Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    feasible: bool
    ready: bool
    status_written: bool
    applied: list[str] = field(default_factory=list)  # children written ("Kind/name")
    deleted: list[str] = field(default_factory=list)
    escalate: bool = False  # READINESS found something only FULL can mend
    waiting: bool = False  # admission: no room (or budget) for it now
    status: dict[str, Any] = field(default_factory=dict)  # the status as it now stands


def contains(live: Any, wanted: Any) -> bool:
    """Whether the live object already has every field we would apply, with our values (the
    server adds defaults; those are not ours to compare). Unequal means apply."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            contains(live[k], v) if k in live else v in ([], {}, None)  # omitempty
            for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(live, list) and len(live) == len(wanted)
                and all(contains(a, b) for a, b in zip(live, wanted, strict=True)))
    return bool(live == wanted)


def reconcile(cluster: Cluster, obj: Obj, world: World, level: Level = Level.FULL,
              time_limit: float = 30.0, keep_within: float = solve.KEEP_WITHIN,
              runtime: render.RuntimeSettings | None = None,
              move_cost: float = 0.0, ledger: Ledger | None = None,
              budgets: Mapping[str, float] | None = None) -> Outcome:
    """``ledger``: admit through the shared ledger (the operator always does); without it the
    graph plans on the live free capacity alone (tests of the rest). ``budgets``: $/hour per
    namespace."""
    if level is Level.READINESS:
        return _readiness(cluster, obj)
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = obj.get("status") or {}
    graph, problems = parse_graph(obj)
    plan: Plan | None = None
    ready = False
    written: list[str] = []
    deleted: list[str] = []
    measured: replanning.Planning | None = None
    admitted: Admission | None = None
    waiting: tuple[Reason, str] | None = None
    blocked = _still_blocked(cluster, ledger, obj) if graph is not None and ledger else []
    if blocked:
        problems = blocked  # not admitted again while a name it needs is someone else's
    elif graph is not None:
        for line in world.bad_profiles:
            log.warning("skipping invalid profile: %s", line)
        measured = replanning.planning(graph, previous)
        try:
            if ledger is None:
                plan = plan_for(graph, obj, world, measured, time_limit, keep_within,
                                move_cost)
            else:
                plan, admitted, waiting, early = admission.admit(
                    cluster, graph, obj, world, measured, ledger, budgets or {}, time_limit,
                    keep_within, move_cost)
                previous = early if early is not None else previous
        except PlanningError as e:
            problems = [str(i) for i in e.issues]
        if plan is not None and not plan.feasible and waiting is None:
            problems = list(plan.reasons)
        if plan is not None and plan.feasible and waiting is None:
            wanted = render.render(graph, plan, {p.name: p for p in world.profiles}, namespace,
                                   meta["uid"], runtime)
            # A graph never planned before has no children to compare or prune (one left by
            # a crash before its first plan was recorded is applied over, or pruned by the
            # next FULL): six lists fewer for every newcomer.
            live = {(c["kind"], c["metadata"]["name"]): c
                    for c in cluster.children(namespace, name)
                    if owned(c, meta["uid"])} if previous.get("plan") else {}
            taken = _not_ours(cluster, wanted, live, namespace, meta["uid"])
            if taken:
                problems, wanted = [_taken(kind, child, namespace) for kind, child in taken], []
                if ledger is not None and not live:  # nothing of it runs: give the room back
                    admitted = _give_back(ledger, obj, taken, budgets or {})
            applied = []
            for manifest in wanted:
                key = (manifest["kind"], manifest["metadata"]["name"])
                have = live.get(key)
                if have is not None and contains(have, manifest):
                    applied.append(have)
                    continue
                applied.append(cluster.apply(manifest))
                written.append("/".join(key))
            order = {kind: i for i, kind in enumerate(CHILD_KINDS)}
            for kind, child in sorted(set(live) - {(m["kind"], m["metadata"]["name"])
                                                   for m in wanted} if not taken else set(),
                                      key=lambda kc: (order.get(kc[0], 99), kc[1])):
                cluster.delete(kind, namespace, child)  # after the new ones exist: no gap
                deleted.append(f"{kind}/{child}")
            ready = not taken and all(available(d) for d in applied
                                      if d["kind"] == "Deployment")
            if written or deleted:
                log.info("%s/%s: applied %s; deleted %s", namespace, name,
                         ", ".join(written) or "nothing", ", ".join(deleted) or "nothing")
    new = status.build(previous, meta.get("generation"), plan, problems, ready,
                       planned_rate=measured.rate if measured else None, admission=admitted,
                       waiting=waiting)
    changed = _write(cluster, obj, previous, new, problems)
    return Outcome(feasible=not problems and plan is not None and waiting is None,
                   ready=ready, status_written=changed, applied=written, deleted=deleted,
                   status=new, waiting=waiting is not None)


def owned(child: Obj, uid: str) -> bool:
    """Whether this graph (by uid) is an owner of ``child``: only then is it ours to change
    or delete (our labels alone could be copied by anyone)."""
    return any(ref.get("uid") == uid
               for ref in child.get("metadata", {}).get("ownerReferences") or [])


def _not_ours(cluster: Cluster, wanted: Iterable[Obj], live: Mapping[tuple[str, str], Obj],
              namespace: str, uid: str) -> list[tuple[str, str]]:
    """The objects (kind, name) the plan would write that exist and are someone else's (a
    user's Service of the same name): never adopted or overwritten. One read per child not
    known as ours."""
    names = [(m["kind"], m["metadata"]["name"]) for m in wanted]
    return _foreign(cluster, [n for n in names if n not in live], namespace, uid)


def _foreign(cluster: Cluster, names: Iterable[tuple[str, str]], namespace: str,
             uid: str) -> list[tuple[str, str]]:
    out = []
    for kind, child in names:
        found = cluster.get(kind, namespace, child)
        if found is not None and not owned(found, uid):
            out.append((kind, child))
    return out


def _taken(kind: str, child: str, namespace: str) -> str:
    return (f"{kind}/{child}: exists in namespace {namespace} and is not this graph's (no "
            "owner reference to it); the operator will not take it over: delete or rename it, "
            "or rename the graph or the step")


def _give_back(ledger: Ledger, obj: Obj, taken: list[tuple[str, str]],
               budgets: Mapping[str, float]) -> Admission:
    """A graph none of whose objects exist, blocked by someone else's: its hold goes back to
    the pools (the graphs waiting for room try again), and until those names are free it is
    not admitted again (no hold taken and handed back on every resync)."""
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    with ledger.lock:
        ledger.release(key)
        ledger.blocked[key] = (meta.get("generation"), tuple(taken))
        ledger.undecidable[key] = meta.get("generation")  # the admission sweep passes it over
        return admission.admission_of(None, ledger, key, budgets.get(key[0]))


def _still_blocked(cluster: Cluster, ledger: Ledger, obj: Obj) -> list[str]:
    """Why a graph that gave its hold back is still blocked: the names that are still someone
    else's, for the spec it was blocked at. Empty when it may be admitted again."""
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    entry = ledger.blocked.get(key)
    if entry is None:
        return []
    generation, names = entry
    taken = (_foreign(cluster, names, key[0], meta["uid"])
             if generation == meta.get("generation") else [])
    if not taken:
        with ledger.lock:
            ledger.blocked.pop(key, None)
            ledger.undecidable.pop(key, None)
    return [_taken(kind, child, key[0]) for kind, child in taken]


def _readiness(cluster: Cluster, obj: Obj) -> Outcome:
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = obj.get("status") or {}
    plan = previous.get("plan")
    if (not plan or previous.get("observedGeneration") != meta.get("generation")
            or status.condition_status(previous, "Planned") != "True"):
        return Outcome(feasible=False, ready=False, status_written=False, escalate=True)
    deployments = {c["metadata"]["name"]: c
                   for c in cluster.children(namespace, name, ("Deployment",))}
    for step in plan.get("steps", []):
        if step.get("server") not in (None, step["step"]):
            continue  # served by another step's Deployment, checked with that step
        d = deployments.get(render.object_name(name, step["step"], step.get("phase")))
        if d is None or not _as_planned(d, step):
            return Outcome(feasible=True, ready=False, status_written=False, escalate=True)
    ready = all(available(d) for d in deployments.values())
    new = status.with_ready(previous, ready)
    changed = _write(cluster, obj, previous, new, [])
    return Outcome(feasible=True, ready=ready, status_written=changed, status=new)


def _as_planned(deployment: Obj, step: Obj) -> bool:
    spec = deployment.get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    return bool(spec.get("replicas") == step.get("replicas")
                and labels.get(render.LABEL_POOL) == step.get("pool"))


def _write(cluster: Cluster, obj: Obj, previous: Obj, new: dict[str, Any],
           problems: Iterable[str]) -> bool:
    if not status.changed(previous, new):
        return False
    meta = obj["metadata"]
    cluster.patch_status(meta["namespace"], meta["name"], new, previous=previous)
    _events(cluster, obj, previous, new, list(problems))
    return True


def _placed(st: Obj) -> Any:
    """The placement a status reports, without the solver's wording."""
    plan = st.get("plan")
    return None if plan is None else (plan.get("steps"), plan.get("slaSeconds"))


def placement(plan: Obj) -> dict[str, str]:
    """A status plan's placement: 'step[/phase]' -> 'pool TPn xR'."""
    return {s["step"] + (f"/{s['phase']}" if s.get("phase") else ""):
            f"{s['pool']} TP{s.get('tensorParallel', 1)} x{s['replicas']}"
            for s in plan.get("steps", [])}


def moves(before: Obj, after: Obj) -> list[str]:
    """Per step phase whose placement changed: 'reason/decode: b200 TP2 x1 -> h200 TP1 x2'."""
    old, new = placement(before), placement(after)
    return [f"{k}: {old.get(k, 'none')} -> {new.get(k, 'none')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _events(cluster: Cluster, obj: Obj, previous: Obj, new: Obj, problems: list[str]) -> None:
    if problems and (status.condition_status(previous, "Infeasible") != "True"
                     or previous.get("observedGeneration") != new.get("observedGeneration")):
        cluster.event(obj, "Warning", "Infeasible", "; ".join(sorted(problems)))
    elif not problems and _placed(new) != _placed(previous):
        plan = new.get("plan", {})
        reason = "Planned" if "plan" not in previous else "Replanned"
        cost = plan.get("costPerHour") or plan.get("costPerRequest")
        moved = moves(previous.get("plan", {}), plan) if "plan" in previous else []
        cluster.event(obj, "Normal", reason,
                      f"{len(plan.get('steps', []))} step phases, predicted "
                      f"{plan.get('latencySeconds', 0):.3g} s of {plan.get('slaSeconds')} s, "
                      f"cost {cost:.4g}" + (f"; moved {'; '.join(moved)}" if moved else ""))
        if moved:
            log.info("%s/%s: replanned: %s", obj["metadata"]["namespace"],
                     obj["metadata"]["name"], "; ".join(moved))
    if (status.condition_status(new, "Ready") == "True"
            and status.condition_status(previous, "Ready") != "True"):
        cluster.event(obj, "Normal", "Ready", "every step has all its replicas available")
