"""Just enough of the Kubernetes API for the gateway: list-then-watch one collection.

No client library: the runtime package stays free of the operator's Kubernetes stack (only the
controller imports it), and the gateway needs two watches. Credentials are a pod's service
account, as the kubelet mounts it (token, CA, namespace), at the standard path or the one
``AGENTGRAPH_SERVICEACCOUNT_DIR`` names; the token is re-read, since bound tokens rotate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from agentgraph.runtime import http

log = logging.getLogger("agentgraph.kube")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_DIR_ENV = "AGENTGRAPH_SERVICEACCOUNT_DIR"
WATCH_TIMEOUT_S = 290  # the API server ends a watch after this; we list-and-watch again
TOKEN_REREAD_S = 60.0
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

Objects = dict[str, dict[str, Any]]


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeAPI:
    def __init__(self, server: str, token_file: Path | None, ca_file: Path | None) -> None:
        self.server = server.rstrip("/")
        self.token_file = token_file
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.client = http.Client(ssl_context=context)
        self._token = ""
        self._read_at = 0.0

    @staticmethod
    def in_cluster() -> KubeAPI:
        folder = Path(os.environ.get(SA_DIR_ENV) or SA_DIR)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not in a cluster: KUBERNETES_SERVICE_HOST is not set")
        if ":" in host:
            host = f"[{host}]"
        return KubeAPI(f"https://{host}:{port}", folder / "token", folder / "ca.crt")

    @staticmethod
    def namespace() -> str | None:
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        path = Path(os.environ.get(SA_DIR_ENV) or SA_DIR) / "namespace"
        return path.read_text().strip() if path.exists() else None

    def _headers(self) -> dict[str, str]:
        now = time.monotonic()
        if self.token_file is not None and now - self._read_at > TOKEN_REREAD_S:
            self._token = self.token_file.read_text().strip()
            self._read_at = now
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.server}{path}" + (f"?{urlencode(params)}" if params else "")
        got = await self.client.request("GET", url, headers=self._headers())
        if got.status != 200:
            raise KubeError(got.status, got.body[:300].decode(errors="replace"))
        data: dict[str, Any] = got.json()
        return data

    async def watch(self, path: str, params: Mapping[str, str],
                    on_change: Callable[[Objects], None], stop: asyncio.Event) -> None:
        """Keep ``on_change`` fed with the whole current collection (by name), from a list and
        then a watch; relist when the watch's resourceVersion is too old (410) or it breaks."""
        failures = 0
        while not stop.is_set():
            try:
                listed = await self.get(path, params)
                objects = {o["metadata"]["name"]: o for o in listed.get("items", [])}
                on_change(dict(objects))
                version = listed["metadata"]["resourceVersion"]
                failures = 0
                await self._follow(path, params, objects, version, on_change, stop)
            except (http.HTTPError, KubeError, OSError, ValueError, KeyError) as e:
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("watch %s: %s; again in %.1f s", path, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _follow(self, path: str, params: Mapping[str, str], objects: Objects,
                      version: str, on_change: Callable[[Objects], None],
                      stop: asyncio.Event) -> None:
        while not stop.is_set():
            query = {**params, "watch": "1", "resourceVersion": version,
                     "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
            url = f"{self.server}{path}?{urlencode(query)}"
            async with self.client.stream("GET", url, headers=self._headers()) as (head, body):
                if head.status != 200:
                    text = b"".join([c async for c in body])[:300]
                    raise KubeError(head.status, text.decode(errors="replace"))
                async for line in http.lines(body):
                    event = orjson.loads(line)
                    kind, obj = event.get("type"), event.get("object", {})
                    if kind == "ERROR":
                        code = obj.get("code", 500)
                        raise KubeError(code, obj.get("message", "watch error"))
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    if kind == "DELETED":
                        objects.pop(name, None)
                    else:
                        objects[name] = obj
                    on_change(dict(objects))
