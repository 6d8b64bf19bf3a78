"""kopf wiring: every trigger ends in the same reconcile(). Run: python -m agentgraph.controller"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import kopf
from kubernetes import client, config

from agentgraph.api import GROUP, VERSION
from agentgraph.controller.cluster import Cluster
from agentgraph.controller.leader import Leader
from agentgraph.controller.reconcile import reconcile
from agentgraph.controller.render import LABEL_GRAPH

log = logging.getLogger("agentgraph.operator")
RESYNC_SECONDS = 60.0
_state: dict[str, Any] = {}


def _reconcile(obj: dict[str, Any]) -> None:
    """reconcile(), with the one API refusal that is expected said in a line, not a traceback."""
    try:
        reconcile(_cluster(), obj)
    except client.ApiException as e:
        if e.status == 403 and "NamespaceTerminating" in str(e.body):
            log.info("%s/%s: namespace is being deleted; nothing to do",
                     obj["metadata"].get("namespace"), obj["metadata"].get("name"))
            return
        raise


def _cluster() -> Cluster:
    cluster: Cluster = _state["cluster"]
    return cluster


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.peering.standalone = True  # one leader by Lease instead of kopf's peering CRDs
    settings.posting.enabled = False  # our own events, with stable reasons
    settings.watching.server_timeout = 300
    leader = Leader(_state["api"], _state["lease_namespace"])
    leader.acquire()
    _state["leader"] = leader


@kopf.on.cleanup()
def release(**_: Any) -> None:
    if "leader" in _state:
        _state["leader"].release()


@kopf.index(GROUP, VERSION, "agentgraphs")
def graphs(namespace: str | None, name: str, **_: Any) -> dict[tuple[str | None, str], None]:
    return {(namespace, name): None}


@kopf.on.resume(GROUP, VERSION, "agentgraphs")
@kopf.on.create(GROUP, VERSION, "agentgraphs")
@kopf.on.update(GROUP, VERSION, "agentgraphs", field="spec")
def on_graph(body: kopf.Body, **_: Any) -> None:
    _reconcile(dict(body))


@kopf.timer(GROUP, VERSION, "agentgraphs", interval=RESYNC_SECONDS, idle=5)
def resync(body: kopf.Body, **_: Any) -> None:
    """Level-based safety net: drift, readiness and capacity are re-read every minute."""
    _reconcile(dict(body))


def _fingerprint(node: kopf.Body) -> tuple[Any, ...]:
    st = node.get("status", {})
    ready = next((c.get("status") for c in st.get("conditions", []) if c.get("type") == "Ready"),
                 None)
    return (tuple(sorted(node.get("metadata", {}).get("labels", {}).items())),
            tuple(sorted(st.get("allocatable", {}).items())),
            bool(node.get("spec", {}).get("unschedulable")), ready)


@kopf.on.event("", "v1", "nodes")
@kopf.on.event(GROUP, VERSION, "hardwareprofiles")
def on_pool_change(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    """Nodes joining, leaving or changing a pool (or a profile changing) replan every graph.
    Heartbeats alone (a Node's status touched, nothing we read changed) do not."""
    key = (body.get("kind"), body.get("metadata", {}).get("name"))
    seen: dict[Any, Any] = _state.setdefault("fingerprints", {})
    mark = None if event.get("type") == "DELETED" else _fingerprint(body)
    if key[0] == "Node" and seen.get(key) == mark:
        return
    seen[key] = mark
    if not _state.get("started"):
        return  # the initial listing: each graph is reconciled on resume anyway
    for namespace, name in list(kwargs["graphs"]):
        obj = _cluster().graph(namespace, name)
        if obj is not None:
            _reconcile(obj)


@kopf.on.event("apps", "v1", "deployments",
               labels={"app.kubernetes.io/managed-by": "agentgraph"})
def on_child(body: kopf.Body, **_: Any) -> None:
    """A step's Deployment changed (pods became available, or someone edited it): reconcile its
    graph, so Ready follows the pods and drift is undone."""
    if not _state.get("started"):
        return
    meta = body.get("metadata", {})
    graph = meta.get("labels", {}).get(LABEL_GRAPH)
    obj = _cluster().graph(meta.get("namespace"), graph) if graph else None
    if obj is not None:
        _reconcile(obj)


@kopf.on.startup()
def started(**_: Any) -> None:
    _state["started"] = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agentgraph-operator", description=__doc__)
    ap.add_argument("--lease-namespace", default="default",
                    help="namespace of the leader-election Lease (default: default)")
    ap.add_argument("--liveness", default="http://127.0.0.1:8081/healthz",
                    help="liveness endpoint served by the operator")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    _state.update(api=api, cluster=Cluster(api), lease_namespace=args.lease_namespace)
    kopf.run(clusterwide=True, liveness_endpoint=args.liveness)
    return 0
