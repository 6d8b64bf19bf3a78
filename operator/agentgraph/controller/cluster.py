"""The Kubernetes API as the reconcile needs it: reads, server-side apply, status, events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pydantic
from kubernetes import client

from agentgraph.api import GROUP, VERSION
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import validation_lines
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

    def profiles(self) -> tuple[list[HardwareProfile], list[str]]:
        """Valid profiles, and one problem line per invalid one (skipped, never guessed)."""
        listed = self.custom.list_cluster_custom_object(GROUP, VERSION, "hardwareprofiles")
        items = listed.get("items", []) if isinstance(listed, dict) else []
        good, bad = [], []
        for item in items:
            name = item.get("metadata", {}).get("name", "?")
            try:
                good.append(HardwareProfile.model_validate(
                    {k: item[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in item}))
            except pydantic.ValidationError as e:
                bad.extend(validation_lines(f"HardwareProfile/{name}", e))
        return good, bad

    def nodes(self) -> list[dict[str, Any]]:
        return [self.core.api_client.sanitize_for_serialization(n)
                for n in self.core.list_node().items]

    def pods(self) -> list[dict[str, Any]]:
        return [self.core.api_client.sanitize_for_serialization(p)
                for p in self.core.list_pod_for_all_namespaces().items]

    def children(self, namespace: str, graph: str) -> list[dict[str, Any]]:
        selector = f"{render.LABEL_GRAPH}={graph},app.kubernetes.io/managed-by=agentgraph"
        out = []
        for kind, items in (
            ("Deployment", self.apps.list_namespaced_deployment(
                namespace, label_selector=selector).items),
            ("Service", self.core.list_namespaced_service(
                namespace, label_selector=selector).items),
        ):
            for item in items:
                obj = self.core.api_client.sanitize_for_serialization(item)
                obj["kind"] = kind
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

    def event(self, graph: dict[str, Any], type_: str, reason: str, message: str) -> None:
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


def names(objs: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}
