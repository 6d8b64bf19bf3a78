"""The Kubernetes API as the reconcile needs it: reads, server-side apply, status, events.

Every call reads the server's JSON as it is (``_preload_content=False``): the client's typed
models cost more CPU than the request itself, and a reconcile only wants plain dicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from agentgraph.api import GROUP, VERSION
from agentgraph.controller import render

FIELD_MANAGER = "agentgraph-operator"
APPLY = "application/apply-patch+yaml"


# Every kind of child, in the order prune deletes them (the gateway's pods before its access).
CHILD_KINDS: dict[str, tuple[str, str, str]] = {
    # kind: (apiVersion, API object, the kubernetes client's resource name)
    "Deployment": ("apps/v1", "apps", "deployment"),
    "Service": ("v1", "core", "service"),
    "ConfigMap": ("v1", "core", "config_map"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rbac", "role_binding"),
    "Role": ("rbac.authorization.k8s.io/v1", "rbac", "role"),
    "ServiceAccount": ("v1", "core", "service_account"),
}


class Cluster:
    def __init__(self, api: client.ApiClient, events_namespace: str = "default") -> None:
        self.events_namespace = events_namespace  # for events about cluster-scoped objects
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    def _api(self, kind: str) -> tuple[Any, str]:
        _, group, resource = CHILD_KINDS[kind]
        return {"apps": self.apps, "core": self.core, "rbac": self.rbac}[group], resource

    # reads -------------------------------------------------------------------------------
    def graph(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = _json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "agentgraphs", name, _preload_content=False))
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return obj if isinstance(obj, dict) else None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object of a child kind, whoever made it; None when there is none."""
        api, resource = self._api(kind)
        try:
            found = _json(getattr(api, f"read_namespaced_{resource}")(
                name, namespace, _preload_content=False))
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    def children(self, namespace: str, graph: str,
                 kinds: tuple[str, ...] = tuple(CHILD_KINDS)) -> list[dict[str, Any]]:
        selector = f"{render.LABEL_GRAPH}={graph},app.kubernetes.io/managed-by=agentgraph"
        out = []
        for kind in kinds:
            api, resource = self._api(kind)
            listed = _json(getattr(api, f"list_namespaced_{resource}")(
                namespace, label_selector=selector, _preload_content=False))
            for obj in listed.get("items") or []:  # list items carry neither apiVersion nor kind
                obj.update(apiVersion=CHILD_KINDS[kind][0], kind=kind)
                out.append(obj)
        return out

    def list_all(self, what: str) -> list[dict[str, Any]]:
        """Every object of ``what`` in the cluster: agentgraphs, hardwareprofiles, nodes, pods."""
        if what in ("agentgraphs", "hardwareprofiles"):
            listed = self.custom.list_cluster_custom_object(GROUP, VERSION, what,
                                                            _preload_content=False)
        elif what == "nodes":
            listed = self.core.list_node(_preload_content=False)
        elif what == "pods":
            listed = self.core.list_pod_for_all_namespaces(_preload_content=False)
        else:
            raise ValueError(f"list_all: unknown kind {what!r}")
        return list(_json(listed).get("items") or [])

    # writes ------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        api, resource = self._api(manifest["kind"])
        out: dict[str, Any] = _json(getattr(api, f"patch_namespaced_{resource}")(
            meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER, force=True,
            _content_type=APPLY, _preload_content=False))
        out["kind"] = manifest["kind"]
        return out

    def delete(self, kind: str, namespace: str, name: str) -> None:
        api, resource = self._api(kind)
        try:
            _drain(getattr(api, f"delete_namespaced_{resource}")(name, namespace,
                                                                 _preload_content=False))
        except client.ApiException as e:
            if e.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None,
                     previous: Mapping[str, Any] | None = None) -> None:
        """Write ``status`` (a JSON merge patch). ``previous``: the status it replaces, whose
        fields ``status`` lacks are removed (a merge patch keeps what it does not name: a
        queue position or a planned rate that went away would stay). ``resource_version``:
        only onto that version of the object (409 Conflict else)."""
        body: dict[str, Any] = {"status": merge_patch(previous or {}, status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        _drain(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "agentgraphs", name, body, _preload_content=False))

    def event(self, graph: Mapping[str, Any], type_: str, reason: str, message: str,
              kind: str = "AgentGraph") -> None:
        """An event about an AgentGraph, or (``kind``) a cluster-scoped HardwareProfile, whose
        events go to ``events_namespace``."""
        meta = graph["metadata"]
        namespace = meta.get("namespace") or self.events_namespace
        at = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=kind, name=meta["name"],
                namespace=meta.get("namespace"), uid=meta["uid"]),
            type=type_, reason=reason, message=message[:1024],
            source=client.V1EventSource(component="agentgraph-operator"),
            first_timestamp=at, last_timestamp=at, count=1)
        _drain(self.core.create_namespaced_event(namespace, body, _preload_content=False))

    def patch_profile_status(self, name: str, status: dict[str, Any],
                             previous: Mapping[str, Any] | None = None) -> None:
        body = {"status": merge_patch(previous or {}, status)}
        _drain(self.custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "hardwareprofiles", name, body, _preload_content=False))


def merge_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` as a JSON merge patch over ``previous``: a field ``previous`` has and ``new``
    lacks becomes null (removed), in nested objects too; lists are replaced whole."""
    out = dict(new)
    for key, old in previous.items():
        if key not in new:
            out[key] = None
        elif isinstance(old, Mapping) and isinstance(new[key], Mapping):
            out[key] = merge_patch(old, new[key])
    return out


def _json(response: Any) -> Any:
    """The body of a raw (``_preload_content=False``) response, as plain JSON."""
    return json.loads(response.data)


def _drain(response: Any) -> None:
    """Read a raw response to its end: only then does its connection go back to the pool."""
    response.data  # noqa: B018
