"""kopf wiring: every trigger ends in reconcile(), one at a time per graph.

The cluster is read from kopf indexes (Nodes, Pods, HardwareProfiles, AgentGraphs), which
kopf fills before any handler runs, so a reconcile lists nothing cluster-wide. Triggers:
  an AgentGraph seen first, or with a new generation (create, resume, spec update),
  a HardwareProfile change, the resync loop                                     -> FULL
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
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import prometheus_client
import pydantic
from kubernetes import client, config

from agentgraph.api import GROUP, VERSION
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import LoadError, validation_lines
from agentgraph.api.naming import LABEL_GRAPH, MANAGED_BY
from agentgraph.api.status import ConditionType, Reason
from agentgraph.controller import indexes, metrics, readiness, snapshot, status
from agentgraph.controller import profiles as installed_profiles
from agentgraph.controller.admitter import Admitter
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.config import ConfigError, OperatorConfig, load
from agentgraph.controller.leader import Leader, standby_health
from agentgraph.controller.measuring import measure
from agentgraph.controller.podwatch import PodWatch
from agentgraph.controller.prometheus import Prometheus
from agentgraph.controller.reconcile import Outcome, reconcile
from agentgraph.controller.state import STATE
from agentgraph.controller.work import Coalescer, Level

log = logging.getLogger("agentgraph.operator")
_work = Coalescer()
# Threads for sync handlers (kopf's pool) and for the work the coroutine handlers hand off (the
# loop's default pool). A reconcile mostly waits on the API server: with 16, a burst of 200
# new graphs had its children created in 32 s instead of 71 s with Python's default of 6.
HANDLER_THREADS = 16
CONNECTIONS = 2 * HANDLER_THREADS + 8  # both pools, the admitter and its status writers


def _cluster() -> Cluster:
    assert STATE.cluster is not None, "main() sets up the cluster client"
    return STATE.cluster


# ------------------------------------------------------------------------------ settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # No change-detecting handler (create/update/resume) is registered: nothing of these is
    # written; the prefix keeps kopf's names ours should one ever be.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.peering.standalone = True  # one leader by Lease instead of kopf's peering CRDs
    settings.posting.enabled = False  # our own events, with stable reasons
    settings.watching.server_timeout = 300
    settings.execution.max_workers = HANDLER_THREADS
    STATE.loop = asyncio.get_running_loop()
    STATE.loop.set_default_executor(ThreadPoolExecutor(HANDLER_THREADS,
                                                       thread_name_prefix="agentgraph"))
    STATE.tasks.append(asyncio.create_task(_every(STATE.config.resync_seconds, Level.FULL)))
    STATE.tasks.append(asyncio.create_task(_every(STATE.config.replan.interval_seconds,
                                                   Level.MEASURE)))


@kopf.on.cleanup()
def release(**_: Any) -> None:
    for task in STATE.tasks:
        task.cancel()
    if STATE.admitter is not None:
        STATE.admitter.stop()
    if STATE.pod_watch is not None:
        STATE.pod_watch.stop()
    if STATE.leader is not None:
        STATE.leader.release()


def _retry_waiting(kwargs: Mapping[str, Any]) -> None:
    """Room freed: the waiting graphs, first in line first, try again."""
    for namespace, name in STATE.ledger.queue():
        _request(namespace, name, Level.FULL, kwargs)


# ------------------------------------------------------------------------------ the work


def _request(namespace: str, name: str, level: Level, kwargs: Mapping[str, Any]) -> None:
    """Reconcile one graph at ``level``, or leave it to the thread already reconciling it."""
    if STATE.indexes is None:
        STATE.indexes = {k: kwargs[k] for k in indexes.INDEXES}  # live views, for the loops

    settings = STATE.config

    def once(obj: dict[str, Any], asked: Level) -> Outcome:
        started = time.perf_counter()
        # READINESS plans nothing: the most frequent trigger copies no index.
        world = indexes.world(kwargs) if asked is Level.FULL else indexes.NO_WORLD
        ledger = STATE.ledger
        budgets = indexes.keyed(kwargs, "budgets") if asked is Level.FULL else None
        if asked is Level.FULL and not ledger.seeded:
            ledger.seed(indexes.keyed(kwargs, "holds").items())
        key = (namespace, name)
        if (asked is Level.FULL and key not in ledger.holds and key not in ledger.waiting
                and STATE.admitter is not None
                and STATE.admitter.sweep(kwargs)):  # a newcomer: the others ahead of it first
            obj = _cluster().graph(namespace, name) or obj  # with what the sweep wrote
        before = ledger.holds.get(key)
        outcome = reconcile(_cluster(), obj, world, asked,
                            time_limit=settings.solver_time_limit_seconds,
                            keep_within=settings.keep_within, runtime=settings.runtime,
                            move_cost=settings.replan.move_cost, ledger=ledger,
                            budgets=budgets)
        if asked is Level.FULL:
            STATE.last_full[key] = time.monotonic()
        after = ledger.holds.get((namespace, name))
        if before is not None and ledger.waiting and (after is None or any(
                after.units.get(p, 0.0) < u - 1e-9 for p, u in before.units.items())):
            _retry_waiting(kwargs)  # this graph gave room back
        metrics.RECONCILE_SECONDS.labels(asked.name).observe(time.perf_counter() - started)
        result = ("escalated" if outcome.escalate else "waiting" if outcome.waiting else
                  "planned" if outcome.feasible else "infeasible")
        metrics.RECONCILES.labels(asked.name, result).inc()
        metrics.CHILD_WRITES.labels("apply").inc(len(outcome.applied))
        metrics.CHILD_WRITES.labels("delete").inc(len(outcome.deleted))
        if outcome.status:
            metrics.record_graph(namespace, name, outcome.status)
        return outcome

    def work(asked: Level) -> None:
        if STATE.leader is not None and not STATE.leader.holding():
            # The Lease went stale (the API server is away): another replica may be leading
            # by now. The resync reconciles this graph once the Lease is renewed.
            log.info("%s/%s: not reconciling: the lease is not renewed", namespace, name)
            return
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
            if e.status == 404 and cluster.graph(namespace, name) is None:
                log.info("%s/%s: deleted while being reconciled; nothing to do", namespace,
                         name)
                _gone((namespace, name), kwargs)  # its hold may have been recorded after
                return
            _failed(cluster, namespace, name, asked, e)
            raise
        except Exception as e:
            _failed(cluster, namespace, name, asked, e)
            raise

    _work.run((namespace, name), level, work)


def _failed(cluster: Cluster, namespace: str, name: str, level: Level, error: Exception) -> None:
    """An error nobody foresaw reaches the graph, not only the log: ReconcileError=True with
    the message, and a Warning event when the message is new. The next event or the resync
    tries again."""
    metrics.RECONCILES.labels(level.name, "error").inc()
    detail = str(error.body or error.reason) if isinstance(error, client.ApiException) else \
        str(error)
    message = f"{level.name.lower()} reconcile failed: {type(error).__name__}: {detail}"[:2000]
    log.error("%s/%s: %s", namespace, name, message, exc_info=error)
    try:
        obj = cluster.graph(namespace, name)
        if obj is None:
            return
        previous = obj.get("status") or {}
        if status.condition_message(previous, ConditionType.RECONCILE_ERROR) == message and \
                status.condition_status(previous, ConditionType.RECONCILE_ERROR) == "True":
            return  # said already: one event per new message, not one per retry
        generation = obj["metadata"].get("generation")
        cluster.patch_status(namespace, name, status.with_error(previous, message, generation),
                             previous=previous)
        cluster.event(obj, "Warning", Reason.UNEXPECTED_ERROR.value, message)
    except Exception:  # the API server may be what fails: the log has it
        log.warning("%s/%s: could not report the failure on the graph", namespace, name,
                    exc_info=True)


def _measure(cluster: Cluster, obj: dict[str, Any], kwargs: Mapping[str, Any]) -> Level:
    """The replanner's pass; the level to reconcile at after it: FULL when what was learned
    changes the plan's inputs (auto mode), else READINESS (a MEASURE stands in for one)."""
    settings = STATE.config
    started = time.perf_counter()
    outcome = measure(cluster, obj, lambda: indexes.world(kwargs), STATE.prometheus,
                      settings.replan, time.time(), settings.solver_time_limit_seconds,
                      settings.keep_within)
    metrics.REPLAN_SECONDS.observe(time.perf_counter() - started)
    if outcome is None:
        return Level.READINESS
    metrics.REPLAN_PASSES.labels("replan" if outcome.replan else
                                 "kept" if outcome.status.get("observed") else "no-metrics").inc()
    if outcome.replan:
        meta = obj["metadata"]
        log.info("%s/%s: replanning: %s", meta["namespace"], meta["name"], outcome.decision)
    return Level.FULL if outcome.replan else Level.READINESS


async def _every(interval: float, level: Level) -> None:
    """Every graph at ``level``, one after another, every ``interval`` seconds: the resync
    (FULL: drift, readiness and capacity re-read, a level-based safety net) and the replanner
    (MEASURE). Not kopf timers: kopf puts a finalizer on every object that has one, and a
    finalizer on the user's AgentGraph would make its deletion wait for the operator (and show
    up in Argo CD's diff). The resync passes over a graph that had a FULL reconcile within the
    interval (a burst of new graphs, or a profile change, just had one each): every graph still
    gets one at least every two intervals."""
    while True:
        await asyncio.sleep(interval)
        indexes = STATE.indexes
        if indexes is None:
            continue  # no handler has run yet: kopf is still listing
        if level is Level.FULL:  # holds of graphs gone unseen (deleted mid-decision)
            stale = [k for k in STATE.ledger.holders() if k not in indexes["graphs"]]
            for key in stale:
                await asyncio.to_thread(_gone, key, indexes)
        for namespace, name in list(indexes["graphs"]):
            last = STATE.last_full.get((namespace, name))
            if level is Level.FULL and last is not None and time.monotonic() - last < interval:
                continue
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
async def on_node(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    """A node joining, leaving or changing in a pool replans the graphs on that pool (and those
    without a plan, which it may now fit). Heartbeats (nothing we read changed) do nothing."""
    name = body.get("metadata", {}).get("name")
    seen = STATE.fingerprints
    mark = None if event.get("type") == "DELETED" else _fingerprint(body)
    before = seen.get(name)
    if before == mark:
        return
    seen[name] = mark
    if not STATE.started or event.get("type") is None:
        return  # the initial listing (type None): each graph is reconciled on first sight anyway
    known, _ = installed_profiles.validated([v for s in kwargs["profiles"].values() for v in s])
    labels = dict(body.get("metadata", {}).get("labels", {}))
    pools = _pools_of(labels, known) | (_pools_of(dict(before[0]), known) if before else set())
    for (namespace, graph), store in list(kwargs["graphs"].items()):
        used = next(iter(store), None)
        if used is None or used & pools:
            _submit(namespace, graph, Level.FULL, kwargs)


@kopf.on.event(GROUP, VERSION, "hardwareprofiles")
async def on_profile(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    """A profile changed: prices, speeds or pools may all differ, so every graph replans. Not
    for the initial listing (type None): every graph is reconciled on first sight anyway, and
    eleven profiles would otherwise mean eleven FULL reconciles of every graph at start-up.
    Nor for a status write (the generation stays). Every profile's status says whether the
    operator can use it (Valid), with a Warning event when it cannot."""
    meta = body.get("metadata", {})
    name = meta.get("name", "")
    if event.get("type") == "DELETED":
        STATE.profile_generations.pop(name, None)
    else:
        _dispatch(_profile_status, dict(body))
        # What plans and pods read: the spec (its generation) and the annotations (the
        # emulator's slowdown). A status write changes neither.
        read = (meta.get("generation"), tuple(sorted((meta.get("annotations") or {}).items())))
        if STATE.profile_generations.get(name) == read:
            return
        STATE.profile_generations[name] = read
    if not STATE.started or event.get("type") is None:
        return
    for namespace, graph in list(kwargs["graphs"]):
        _submit(namespace, graph, Level.FULL, kwargs)


def _profile_status(raw: dict[str, Any]) -> None:
    if STATE.leader is not None and not STATE.leader.holding():
        return  # written by whoever leads; the next event or start-up listing brings it back
    meta = raw["metadata"]
    problems = installed_profiles.problems(raw)
    previous = raw.get("status") or {}
    new = status.profile_status(previous, problems, meta.get("generation"))
    if not status.changed(previous, new):
        return
    cluster = _cluster()
    try:
        cluster.patch_profile_status(meta["name"], new, previous=previous)
        if problems and status.condition_message(previous, ConditionType.VALID) != \
                status.condition_message(new, ConditionType.VALID):
            cluster.event(raw, "Warning", Reason.INVALID.value,
                          "the operator cannot use this profile: " + "; ".join(problems),
                          kind="HardwareProfile")
    except client.ApiException as e:
        log.warning("HardwareProfile %s: could not write its status: %s", meta["name"],
                    e.reason)


@kopf.on.event(GROUP, VERSION, "agentgraphs")
async def on_arrival(event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body,
                     **kwargs: Any) -> None:
    """On the event loop, at once: a graph that neither holds nor waits wakes the admitter,
    which decides it (and every other newcomer, in order) without waiting for a handler
    thread. Registered before the sync handlers of the same event, which kopf runs first
    otherwise (and they wait for a free thread)."""
    key = (indexes.namespaced(namespace), name)
    ledger = STATE.ledger
    generation = body.get("metadata", {}).get("generation")
    if (STATE.started and STATE.admitter is not None and event.get("type") != "DELETED"
            and key not in ledger.holds and key not in ledger.waiting
            and ledger.undecidable.get(key, -1) != generation):
        STATE.admitter.wake(kwargs, key, body)


@kopf.on.event(GROUP, VERSION, "agentgraphs")
async def on_graph_event(event: kopf.RawEvent, namespace: str | None, name: str,
                         body: kopf.Body, **kwargs: Any) -> None:
    """A deleted graph's children go by garbage collection; its metrics and its hold go here,
    and the graphs waiting for room try again. A status written while a child changed may
    have crossed that child's event: when the caches now say Ready should flip, check."""
    key = (indexes.namespaced(namespace), name)
    if event.get("type") == "DELETED":
        STATE.generations.pop(key, None)
        _dispatch(_gone, key, kwargs)
        return
    # Level-based, by generation: the first sight of a graph (the initial listing, or it was
    # created) and every spec change reconcile it in FULL; our own status writes do not. Not
    # kopf's create/update/resume handlers: they keep the whole spec in an annotation (kopf's
    # last-handled configuration), which a spec near the API server's 256 KiB limit on
    # annotations cannot carry, and they patch the user's object.
    # By uid too: a graph deleted and created again under its name (a DELETED event lost to
    # a watch that expired) starts at generation 1 again, maybe the number last seen.
    meta = body.get("metadata", {})
    seen = (meta.get("uid"), meta.get("generation"))
    if STATE.generations.get(key) != seen:
        STATE.generations[key] = seen
        _submit(*key, Level.FULL, kwargs)
        return
    shown = list(kwargs["placed"].get(key, ()))
    if STATE.started and shown:
        verdict = readiness.check(shown[0], list(kwargs["deployments"].get(key, ())))
        if verdict is not None and verdict != shown[0].ready:
            _submit(*key, Level.READINESS, kwargs)


def _gone(key: tuple[str, str], kwargs: Mapping[str, Any]) -> None:
    metrics.forget_graph(*key)
    STATE.last_full.pop(key, None)
    if STATE.ledger.release(key) and STATE.started:
        _retry_waiting(kwargs)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
async def on_child(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    """A step's Deployment changed (pods became available, or someone edited it). Most such
    changes leave the graph's Ready as it is: the caches tell, on the event loop, and then
    nothing is called and no handler thread is taken."""
    graph = labels.get(LABEL_GRAPH)
    if not (STATE.started and graph):
        return
    key = (indexes.namespaced(namespace), graph)
    if readiness.stale(kwargs["placed"].get(key, ()), kwargs["deployments"].get(key, ())):
        _submit(*key, Level.READINESS, kwargs)


def _submit(namespace: str, name: str, level: Level, kwargs: Mapping[str, Any]) -> None:
    """From the event loop: reconcile in a handler thread, without waiting; requests for a
    graph already queued merge into that one."""
    key = (namespace, name)

    def reconcile_queued() -> None:
        _request(namespace, name, _work.dequeue(key), kwargs)

    if _work.queue(key, level):
        _dispatch(reconcile_queued)


def _dispatch(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn`` in a handler thread without waiting for it (from the event loop)."""
    def done(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("%s failed", fn.__name__, exc_info=future.exception())

    asyncio.get_running_loop().run_in_executor(None, fn, *args).add_done_callback(done)


@kopf.on.startup()
def started(**_: Any) -> None:
    STATE.started = True


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
    conf = client.Configuration.get_default_copy()
    conf.connection_pool_maxsize = CONNECTIONS  # one per thread that calls the API at once
    api = client.ApiClient(conf)
    STATE.cluster = Cluster(api, events_namespace=settings.events_namespace)
    STATE.config, STATE.admitter = settings, Admitter()
    if settings.prometheus_url:
        STATE.prometheus = Prometheus(settings.prometheus_url)
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
    STATE.leader = leader
    if settings.profiles_file:
        installed_profiles.install(api, shipped, settings.lease_namespace_or_default)
    if settings.watch_namespaces:
        STATE.pod_watch = PodWatch(api).start()
        log.info("watching AgentGraphs in %s only", ", ".join(settings.watch_namespaces))
    kopf.run(clusterwide=not settings.watch_namespaces, namespaces=settings.watch_namespaces,
             liveness_endpoint=settings.liveness)
    return 0
