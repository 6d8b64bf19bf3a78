"""The Kubernetes API as the reconcile needs it: reads, server-side apply, status, events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from agentgraph.api import GROUP, VERSION
from agentgraph.controller import render

FIELD_MANAGER = "agentgraph-operator"
APPLY = "application/apply-patch+yaml"


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # reads -------------------------------------------------------------------------------
    def graph(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "agentgraphs", name)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return obj if isinstance(obj, dict) else None

    def children(self, namespace: str, graph: str) -> list[dict[str, Any]]:
        selector = f"{render.LABEL_GRAPH}={graph},app.kubernetes.io/managed-by=agentgraph"
        out = []
        for api_version, kind, items in (
            ("apps/v1", "Deployment", self.apps.list_namespaced_deployment(
                namespace, label_selector=selector).items),
            ("v1", "Service", self.core.list_namespaced_service(
                namespace, label_selector=selector).items),
        ):
            for item in items:  # list items carry neither apiVersion nor kind
                obj = self.core.api_client.sanitize_for_serialization(item)
                obj.update(apiVersion=api_version, kind=kind)
                out.append(obj)
        return out

    # writes ------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        result: object
        if manifest["kind"] == "Deployment":
            result = self.apps.patch_namespaced_deployment(
                meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                force=True, _content_type=APPLY)
        else:
            result = self.core.patch_namespaced_service(
                meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                force=True, _content_type=APPLY)
        out: dict[str, Any] = self.core.api_client.sanitize_for_serialization(result)
        out["kind"] = manifest["kind"]
        return out

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            if kind == "Deployment":
                self.apps.delete_namespaced_deployment(name, namespace)
            else:
                self.core.delete_namespaced_service(name, namespace)
        except client.ApiException as e:
            if e.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "agentgraphs", name, {"status": status})

    def event(self, graph: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = graph["metadata"]
        at = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                         namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="AgentGraph", name=meta["name"],
                namespace=meta["namespace"], uid=meta["uid"]),
            type=type_, reason=reason, message=message[:1024],
            source=client.V1EventSource(component="agentgraph-operator"),
            first_timestamp=at, last_timestamp=at, count=1)
        self.core.create_namespaced_event(meta["namespace"], body)

