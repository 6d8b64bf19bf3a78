"""kopf wiring: every trigger ends in reconcile(), one at a time per graph.

The cluster is read from kopf indexes (Nodes, Pods, HardwareProfiles, AgentGraphs), which
kopf fills before any handler runs, so a reconcile lists nothing cluster-wide. Triggers:
  AgentGraph resume/create/spec update, HardwareProfile change, the resync loop -> FULL
  the replanner loop (every replan.intervalSeconds) -> MEASURE (FULL when it learned something)
  Node joining/leaving/changing a pool      -> FULL for the graphs on that pool, and unplanned ones
  one of our Deployments changing           -> READINESS (escalates to FULL on drift)
Run: python -m agentgraph.controller
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import prometheus_client
import pydantic
from kubernetes import client, config

from agentgraph.api import GROUP, VERSION
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import LoadError, validation_lines
from agentgraph.api.naming import LABEL_GRAPH, LABEL_POOL, MANAGED_BY
from agentgraph.controller import metrics, snapshot
from agentgraph.controller import profiles as installed_profiles
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.config import ConfigError, OperatorConfig, load
from agentgraph.controller.leader import Leader, standby_health
from agentgraph.controller.ledger import Hold, Ledger
from agentgraph.controller.prometheus import Prometheus
from agentgraph.controller.reconcile import BUDGET_ANNOTATION, Outcome, World, measure, reconcile
from agentgraph.controller.status import condition_status
from agentgraph.controller.work import Coalescer, Level

log = logging.getLogger("agentgraph.operator")


@dataclass
class State:
    """Everything the handlers share, set up by main() and kopf's start-up handlers."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    cluster: Cluster | None = None
    prometheus: Prometheus | None = None
    leader: Leader | None = None
    loop: asyncio.AbstractEventLoop | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    indexes: dict[str, Any] | None = None  # kopf's live index views, for the loops
    fingerprints: dict[str, Any] = field(default_factory=dict)  # per node: what we read of it
    started: bool = False
    ledger: Ledger = field(default_factory=Ledger)  # what every admitted graph holds


_state = State()
_work = Coalescer()
INDEXES = ("graphs", "nodes", "pods", "profiles", "holds", "budgets")
NO_WORLD = World(profiles=())
PROFILE_CACHE = 1000  # validated profiles kept, by (name, resourceVersion)
_profiles_seen: dict[tuple[str, str], tuple[HardwareProfile | None, list[str]]] = {}


def _namespaced(namespace: str | None) -> str:
    if namespace is None:  # AgentGraphs, Pods and Deployments are all namespaced
        raise kopf.PermanentError("a namespaced object arrived without a namespace")
    return namespace


def _cluster() -> Cluster:
    assert _state.cluster is not None, "main() sets up the cluster client"
    return _state.cluster


# ------------------------------------------------------------------------------ settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.peering.standalone = True  # one leader by Lease instead of kopf's peering CRDs
    settings.posting.enabled = False  # our own events, with stable reasons
    settings.watching.server_timeout = 300
    _state.loop = asyncio.get_running_loop()
    _state.tasks.append(asyncio.create_task(_every(_state.config.resync_seconds, Level.FULL)))
    _state.tasks.append(asyncio.create_task(_every(_state.config.replan.interval_seconds,
                                                   Level.MEASURE)))


@kopf.on.cleanup()
def release(**_: Any) -> None:
    for task in _state.tasks:
        task.cancel()
    if _state.leader is not None:
        _state.leader.release()


# ------------------------------------------------------------------------------ indexes
# Index functions keep only what the planner reads: memory stays small at thousands of pods.


@kopf.index(GROUP, VERSION, "agentgraphs")
def graphs(namespace: str | None, name: str, status: kopf.Status,
           **_: Any) -> dict[tuple[str, str], frozenset[str] | None]:
    """Each graph and the pools its running plan uses (None while it has no plan)."""
    namespace = _namespaced(namespace)
    planned = condition_status(status, "Planned") == "True"
    pools = status.get("plan", {}).get("pools")
    return {(namespace, name): frozenset(pools.split(",")) if planned and pools else None}


@kopf.index(GROUP, VERSION, "agentgraphs")
def holds(namespace: str | None, name: str, status: kopf.Status,
          **_: Any) -> dict[tuple[str, str], Hold]:
    """What each admitted graph's status says it holds: the ledger is seeded from these when
    this operator starts leading (then the ledger, written first, is the truth)."""
    namespace = _namespaced(namespace)
    if condition_status(status, "Admitted") != "True":
        return {}
    admission = status.get("admission") or {}
    try:
        got = Hold(units={h["pool"]: float(h["units"]) for h in admission.get("holds", [])},
                   pods={h["pool"]: float(h["pods"]) for h in admission.get("holds", [])},
                   cost_per_hour=float(admission.get("costPerHour") or 0.0))
    except (KeyError, TypeError, ValueError):
        return {}
    return {(namespace, name): got}


@kopf.index("", "v1", "namespaces")
def budgets(name: str, annotations: kopf.Annotations, **_: Any) -> dict[str, float]:
    """Namespaces with a $/hour budget for their graphs (agentgraph.dev/budget-per-hour)."""
    raw = annotations.get(BUDGET_ANNOTATION)
    if raw is None:
        return {}
    try:
        value = float(raw)
    except ValueError:
        log.warning("namespace %s: %s=%r is not a number; no budget applies", name,
                    BUDGET_ANNOTATION, raw)
        return {}
    return {name: value} if value >= 0 else {}


@kopf.index("", "v1", "nodes")
def nodes(name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status,
          **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {"metadata": {"name": name, "labels": dict(labels)},
                   "spec": {"unschedulable": bool(spec.get("unschedulable"))},
                   "status": {"allocatable": dict(status.get("allocatable", {})),
                              "conditions": [dict(c) for c in status.get("conditions", [])
                                             if c.get("type") == "Ready"]}}}


@kopf.index("", "v1", "pods")
def pods(namespace: str | None, name: str, labels: kopf.Labels, spec: kopf.Spec,
         status: kopf.Status, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods that hold resources on a node (bound and not finished), and our step pods that are
    not bound yet (they will take their pool's resources)."""
    namespace = _namespaced(namespace)
    node = spec.get("nodeName")
    pool = labels.get(LABEL_POOL)
    if (not node and not pool) or status.get("phase") in snapshot.TERMINAL_PHASES:
        return {}
    containers = [{"resources": {"requests": dict(c.get("resources", {}).get("requests", {}))}}
                  for c in spec.get("containers", [])]
    kept = {k: v for k, v in ((LABEL_GRAPH, labels.get(LABEL_GRAPH)), (LABEL_POOL, pool)) if v}
    return {(namespace, name): {
        "metadata": {"namespace": namespace, "labels": kept},
        "spec": {"nodeName": node, "containers": containers},
        "status": {"phase": status.get("phase")}}}


@kopf.index(GROUP, VERSION, "hardwareprofiles")
def profiles(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}}


def _values(index: Mapping[Any, Any]) -> list[Any]:
    return [value for store in index.values() for value in store]


async def _copy(kwargs: Mapping[str, Any], *names: str) -> list[list[Any]]:
    """Runs on the event loop, where kopf writes its indexes: a consistent copy."""
    return [_values(kwargs[name]) for name in names]


def _read(kwargs: Mapping[str, Any], *names: str) -> list[list[Any]]:
    """The indexes ``names``, copied from a handler's worker thread (never call on the loop)."""
    assert _state.loop is not None
    return asyncio.run_coroutine_threadsafe(_copy(kwargs, *names),
                                            _state.loop).result(timeout=60)


def _profile(raw: Mapping[str, Any]) -> tuple[HardwareProfile | None, list[str]]:
    meta = raw.get("metadata", {})
    key = (meta.get("name", "?"), meta.get("resourceVersion", ""))
    if key not in _profiles_seen:
        if len(_profiles_seen) > PROFILE_CACHE:  # old resourceVersions pile up otherwise
            _profiles_seen.clear()
        try:
            _profiles_seen[key] = (HardwareProfile.model_validate(raw), [])
        except pydantic.ValidationError as e:
            _profiles_seen[key] = (None, validation_lines(f"HardwareProfile/{key[0]}", e))
    return _profiles_seen[key]


def _validated(raw_profiles: list[Any]) -> tuple[list[HardwareProfile], list[str]]:
    good, bad = [], []
    for raw in sorted(raw_profiles, key=lambda r: r["metadata"]["name"]):
        profile, problems = _profile(raw)
        if profile is not None:
            good.append(profile)
        bad.extend(problems)
    return good, bad


def _world(kwargs: Mapping[str, Any]) -> World:
    raw_profiles, node_list, pod_list = _read(kwargs, "profiles", "nodes", "pods")
    good, bad = _validated(raw_profiles)
    return World(profiles=good, bad_profiles=bad, nodes=node_list, pods=pod_list)


async def _copy_keyed(kwargs: Mapping[str, Any], name: str) -> dict[Any, Any]:
    return {key: value for key, store in kwargs[name].items() for value in store}


def _keyed(kwargs: Mapping[str, Any], name: str) -> dict[Any, Any]:
    """Index ``name`` as key -> value, copied on the event loop."""
    assert _state.loop is not None
    return asyncio.run_coroutine_threadsafe(_copy_keyed(kwargs, name),
                                            _state.loop).result(timeout=60)


def _retry_waiting(kwargs: Mapping[str, Any]) -> None:
    """Room freed: the waiting graphs, first in line first, try again."""
    for namespace, name in _state.ledger.queue():
        _request(namespace, name, Level.FULL, kwargs)


# ------------------------------------------------------------------------------ the work


def _request(namespace: str, name: str, level: Level, kwargs: Mapping[str, Any]) -> None:
    """Reconcile one graph at ``level``, or leave it to the thread already reconciling it."""
    if _state.indexes is None:
        _state.indexes = {k: kwargs[k] for k in INDEXES}  # live views, for the loops

    settings = _state.config

    def once(obj: dict[str, Any], asked: Level) -> Outcome:
        started = time.perf_counter()
        # READINESS plans nothing: the most frequent trigger copies no index.
        world = _world(kwargs) if asked is Level.FULL else NO_WORLD
        ledger = _state.ledger
        if asked is Level.FULL and not ledger.seeded:
            ledger.seed(_keyed(kwargs, "holds").items())
        before = ledger.holds.get((namespace, name))
        outcome = reconcile(_cluster(), obj, world, asked,
                            time_limit=settings.solver_time_limit_seconds,
                            keep_within=settings.keep_within, runtime=settings.runtime,
                            move_cost=settings.replan.move_cost, ledger=ledger,
                            budgets=_keyed(kwargs, "budgets") if asked is Level.FULL else None)
        after = ledger.holds.get((namespace, name))
        if before is not None and ledger.waiting and (after is None or any(
                after.units.get(p, 0.0) < u - 1e-9 for p, u in before.units.items())):
            _retry_waiting(kwargs)  # this graph gave room back
        metrics.RECONCILE_SECONDS.labels(asked.name).observe(time.perf_counter() - started)
        result = ("escalated" if outcome.escalate else
                  "planned" if outcome.feasible else "infeasible")
        metrics.RECONCILES.labels(asked.name, result).inc()
        metrics.CHILD_WRITES.labels("apply").inc(len(outcome.applied))
        metrics.CHILD_WRITES.labels("delete").inc(len(outcome.deleted))
        if outcome.status:
            metrics.record_graph(namespace, name, outcome.status)
        return outcome

    def work(asked: Level) -> None:
        cluster = _cluster()
        obj = cluster.graph(namespace, name)
        if obj is None:
            metrics.forget_graph(namespace, name)
            return  # deleted meanwhile: garbage collection removes its children
        try:
            if asked is Level.MEASURE:
                asked = _measure(cluster, obj, kwargs)
                obj = cluster.graph(namespace, name) or obj
            if once(obj, asked).escalate:
                once(cluster.graph(namespace, name) or obj, Level.FULL)
        except client.ApiException as e:
            if e.status == 403 and "NamespaceTerminating" in str(e.body):
                log.info("%s/%s: namespace is being deleted; nothing to do", namespace, name)
                return
            metrics.RECONCILES.labels(asked.name, "error").inc()
            raise

    _work.run((namespace, name), level, work)


def _measure(cluster: Cluster, obj: dict[str, Any], kwargs: Mapping[str, Any]) -> Level:
    """The replanner's pass; the level to reconcile at after it: FULL when what was learned
    changes the plan's inputs (auto mode), else READINESS (a MEASURE stands in for one)."""
    settings = _state.config
    started = time.perf_counter()
    outcome = measure(cluster, obj, lambda: _world(kwargs), _state.prometheus, settings.replan,
                      time.time(), settings.solver_time_limit_seconds, settings.keep_within)
    metrics.REPLAN_SECONDS.observe(time.perf_counter() - started)
    if outcome is None:
        return Level.READINESS
    metrics.REPLAN_PASSES.labels("replan" if outcome.replan else
                                 "kept" if outcome.status.get("observed") else "no-metrics").inc()
    if outcome.replan:
        meta = obj["metadata"]
        log.info("%s/%s: replanning: %s", meta["namespace"], meta["name"], outcome.decision)
    return Level.FULL if outcome.replan else Level.READINESS


@kopf.on.resume(GROUP, VERSION, "agentgraphs")
@kopf.on.create(GROUP, VERSION, "agentgraphs")
@kopf.on.update(GROUP, VERSION, "agentgraphs", field="spec")
def on_graph(namespace: str | None, name: str, **kwargs: Any) -> None:
    _request(_namespaced(namespace), name, Level.FULL, kwargs)


async def _every(interval: float, level: Level) -> None:
    """Every graph at ``level``, one after another, every ``interval`` seconds: the resync
    (FULL: drift, readiness and capacity re-read, a level-based safety net) and the replanner
    (MEASURE). Not kopf timers: kopf puts a finalizer on every object that has one, and a
    finalizer on the user's AgentGraph would make its deletion wait for the operator (and show
    up in Argo CD's diff)."""
    while True:
        await asyncio.sleep(interval)
        indexes = _state.indexes
        if indexes is None:
            continue  # no handler has run yet: kopf is still listing
        for namespace, name in list(indexes["graphs"]):
            try:
                await asyncio.to_thread(_request, namespace, name, level, indexes)
            except Exception:  # one graph's failure must not stop the others'
                log.exception("%s/%s: %s pass failed", namespace, name, level.name.lower())


def _fingerprint(node: Mapping[str, Any]) -> tuple[Any, ...]:
    st = node.get("status", {})
    ready = next((c.get("status") for c in st.get("conditions", []) if c.get("type") == "Ready"),
                 None)
    return (tuple(sorted(node.get("metadata", {}).get("labels", {}).items())),
            tuple(sorted(st.get("allocatable", {}).items())),
            bool(node.get("spec", {}).get("unschedulable")), ready)


def _pools_of(labels: Mapping[str, str], known: list[HardwareProfile]) -> set[str]:
    return {p.name for p in known if snapshot.matches(labels, p.spec.pool.node_selector)}


@kopf.on.event("", "v1", "nodes")
def on_node(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    """A node joining, leaving or changing in a pool replans the graphs on that pool (and those
    without a plan, which it may now fit). Heartbeats (nothing we read changed) do nothing."""
    name = body.get("metadata", {}).get("name")
    seen = _state.fingerprints
    mark = None if event.get("type") == "DELETED" else _fingerprint(body)
    before = seen.get(name)
    if before == mark:
        return
    seen[name] = mark
    if not _state.started:
        return  # the initial listing: each graph is reconciled on resume anyway
    known, _ = _validated(_read(kwargs, "profiles")[0])
    labels = dict(body.get("metadata", {}).get("labels", {}))
    pools = _pools_of(labels, known) | (_pools_of(dict(before[0]), known) if before else set())
    for (namespace, graph), store in list(kwargs["graphs"].items()):
        used = next(iter(store), None)
        if used is None or used & pools:
            _request(namespace, graph, Level.FULL, kwargs)


@kopf.on.event(GROUP, VERSION, "hardwareprofiles")
def on_profile(event: kopf.RawEvent, **kwargs: Any) -> None:
    """A profile changed: prices, speeds or pools may all differ, so every graph replans."""
    if not _state.started:
        return
    for namespace, graph in list(kwargs["graphs"]):
        _request(namespace, graph, Level.FULL, kwargs)


@kopf.on.event(GROUP, VERSION, "agentgraphs")
def on_graph_event(event: kopf.RawEvent, namespace: str | None, name: str,
                   **kwargs: Any) -> None:
    """A deleted graph's children go by garbage collection; its metrics and its hold go here,
    and the graphs waiting for room try again."""
    if event.get("type") == "DELETED":
        key = (_namespaced(namespace), name)
        metrics.forget_graph(*key)
        if _state.ledger.release(key) and _state.started:
            threading.Thread(target=_retry_waiting, args=(kwargs,), daemon=True).start()


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
def on_child(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    """A step's Deployment changed (pods became available, or someone edited it)."""
    graph = labels.get(LABEL_GRAPH)
    if _state.started and graph:
        _request(_namespaced(namespace), graph, Level.READINESS, kwargs)


@kopf.on.startup()
def started(**_: Any) -> None:
    _state.started = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agentgraph-operator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="settings file (YAML; the chart mounts its ConfigMap)")
    ap.add_argument("--lease-namespace", help="namespace of the leader-election Lease "
                    "(overrides the file; default $POD_NAMESPACE, else default)")
    ap.add_argument("--liveness", help="liveness endpoint served by the operator (overrides "
                    "the file; default http://0.0.0.0:8081/healthz)")
    ap.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (overrides the "
                    "file; default 8080, 0 turns it off)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {k: v for k, v in (("lease_namespace", args.lease_namespace),
                                   ("liveness", args.liveness),
                                   ("metrics_port", args.metrics_port)) if v is not None}
    try:
        settings = OperatorConfig.model_validate({**load(args.config).model_dump(), **overrides})
    except (ConfigError, OSError) as e:
        print(f"agentgraph-operator: {e}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as e:
        for line in validation_lines("command line", e):
            print(f"agentgraph-operator: {line}", file=sys.stderr)
        return 2
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    _state.cluster, _state.config = Cluster(api), settings
    if settings.prometheus_url:
        _state.prometheus = Prometheus(settings.prometheus_url)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    shipped: list[HardwareProfile] = []
    if settings.profiles_file:
        try:
            shipped = installed_profiles.load(settings.profiles_file)
        except (LoadError, OSError) as e:
            for line in getattr(e, "lines", [str(e)]):
                print(f"agentgraph-operator: {line}", file=sys.stderr)
            return 2
    leader = Leader(api, settings.lease_namespace_or_default)
    with standby_health(settings.liveness):
        leader.acquire()  # a standby waits here, alive, until the Lease is free
    _state.leader = leader
    if settings.profiles_file:
        installed_profiles.install(api, shipped)
    kopf.run(clusterwide=True, liveness_endpoint=settings.liveness)
    return 0
