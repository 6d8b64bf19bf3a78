"""Every pod in the cluster, for an operator that watches only some namespaces.

A pool's free devices are what its nodes hold less what *every* pod bound there requests,
whoever runs it. kopf's namespace setting covers all namespaced kinds, so a namespaced operator's
pods index sees only its own namespaces. This keeps the cluster-wide view itself: one list (in
pages) and then a watch from its resourceVersion, in a thread, read-only (the chart's
ClusterRole grants get/list/watch on pods and nothing else on them). A watch that expires (410)
or breaks lists again; while the API server is away the last view is kept.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from agentgraph.controller.snapshot import pod_entry

log = logging.getLogger("agentgraph.podwatch")
PAGE = 500  # pods per list call
WATCH_SECONDS = 240  # the server ends each watch after this; it is opened again from there
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off after a failure, the last one repeated
Key = tuple[str, str]


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class PodWatch:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self._pods: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._listed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # the thread ends at its next event or watch timeout (daemon)

    def values(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The pods that hold room on a node (snapshot.pod_entry). Waits for the first list;
        raises TimeoutError if it has not come by ``timeout`` (a reconcile then fails and says
        so, instead of planning on a cluster it thinks empty)."""
        if not self._listed.wait(timeout):
            raise TimeoutError(f"the cluster's pods were not listed within {timeout:.0f} s "
                               "(the operator needs get/list/watch on pods cluster-wide)")
        with self._lock:
            return list(self._pods.values())

    # the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                version = self._list()
                failures = 0
                while not self._stopping.is_set():
                    version = self._watch(version)
            except Expired:
                log.info("pod watch expired; listing the cluster's pods again")
            except Exception as e:  # an outage, a refusal: keep the last view and retry
                wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("pod watch failed (%s); retrying in %.0f s", e, wait)
                self._stopping.wait(wait)

    def _list(self) -> str:
        pods: dict[Key, dict[str, Any]] = {}
        token: str | None = None
        while True:
            raw: Any = self.core.list_pod_for_all_namespaces(  # a urllib3 response
                limit=PAGE, _continue=token, _preload_content=False)
            page = json.loads(raw.data)
            for pod in page.get("items") or []:
                self._keep(pods, pod)
            token = page["metadata"].get("continue")
            if not token:
                break
        with self._lock:
            self._pods = pods
        self._listed.set()
        return str(page["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        try:
            response: Any = self.core.list_pod_for_all_namespaces(
                watch=True, resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS, _preload_content=False)
        except client.ApiException as e:
            if e.status == 410:
                raise Expired() from e
            raise
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired()
                    raise RuntimeError(f"{obj.get('reason')}: {obj.get('message')}")
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._pods.pop(_key(obj), None)
                    else:
                        self._keep(self._pods, obj)
        finally:
            response.close()
            response.release_conn()
        return version

    @staticmethod
    def _keep(pods: dict[Key, dict[str, Any]], pod: dict[str, Any]) -> None:
        entry = pod_entry(pod)
        if entry is None:
            pods.pop(_key(pod), None)  # finished, or unbound and not ours
        else:
            pods[_key(pod)] = entry


def _key(pod: dict[str, Any]) -> Key:
    meta = pod.get("metadata", {})
    return str(meta.get("namespace")), str(meta.get("name"))
