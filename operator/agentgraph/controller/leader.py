"""Leader election on a coordination.k8s.io Lease: only the holder reconciles.

A replica blocks at start-up until it holds the Lease and renews it every third of its duration.
When it cannot renew in time (the API server is down or unreachable) it stops acting
(``holding()`` is False: reconciles wait) and keeps trying: if it gets the Lease back, it goes on
without a restart; if another replica holds it meanwhile, it exits (its Deployment restarts it
as a standby). Takeover uses the Lease's resourceVersion, so two replicas can never both win.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime

from kubernetes import client

log = logging.getLogger("agentgraph.leader")
LEASE_SECONDS = 15
RELEASE_SECONDS = 5.0  # at most, handing the lease back at shutdown


def _now() -> datetime:
    return datetime.now(UTC)


class Leader:
    def __init__(self, api: client.ApiClient, namespace: str, name: str = "agentgraph-operator",
                 identity: str | None = None) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._renewed = -math.inf  # time.monotonic() of the last renewal: none yet

    def _try(self) -> bool:
        spec = client.V1LeaseSpec(holder_identity=self.identity,
                                  lease_duration_seconds=LEASE_SECONDS,
                                  acquire_time=_now(), renew_time=_now())
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace,
                                                      _request_timeout=self._timeout())
        except client.ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=spec)
            try:
                self.leases.create_namespaced_lease(self.namespace, body,
                                                    _request_timeout=self._timeout())
                return True
            except client.ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
        current = lease.spec or client.V1LeaseSpec()
        held = current.holder_identity
        renewed = current.renew_time
        expired = renewed is None or (_now() - renewed).total_seconds() > (
            current.lease_duration_seconds or LEASE_SECONDS)
        if held not in (None, self.identity) and not expired:
            return False
        if held == self.identity:
            spec.acquire_time = current.acquire_time
        lease.spec = spec
        try:  # replace carries resourceVersion: a concurrent takeover makes this a 409
            self.leases.replace_namespaced_lease(self.name, self.namespace, lease,
                                                 _request_timeout=self._timeout())
            return True
        except client.ApiException as e:
            if e.status == 409:
                return False
            raise

    def acquire(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        said = False
        while not self._try():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lease {self.namespace}/{self.name} is held by another")
            if not said:
                log.info("standing by: lease %s/%s is held by another replica", self.namespace,
                         self.name)
                said = True
            time.sleep(2)
        log.info("leading as %s", self.identity)
        self._renewed = time.monotonic()
        threading.Thread(target=self._renew, daemon=True, name="lease-renewal").start()

    @staticmethod
    def _timeout() -> float:
        """Each Lease call gives up well before the renewal falls behind (a call that hangs
        must not keep ``holding()`` True)."""
        return LEASE_SECONDS / 3

    def holding(self) -> bool:
        """Whether this replica may act now: it holds the Lease and renewed it in time (by
        the clock, so a renewal stuck in a call counts as late)."""
        return time.monotonic() - self._renewed <= LEASE_SECONDS * 2 / 3

    def _renew(self) -> None:
        acting = True  # for the log: when holding() turned, once
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                if self._try():
                    self._renewed = time.monotonic()
                    if not acting:
                        log.warning("renewed the lease %s/%s again: acting again",
                                    self.namespace, self.name)
                        acting = True
                    continue
                # The API server answered and another replica holds the Lease.
                log.error("lost the lease %s/%s to another replica: exiting so it leads "
                          "alone", self.namespace, self.name)
                os._exit(3)
            except Exception as e:  # unreachable or refusing: nobody else can take it either
                log.warning("lease renewal failed: %s", type(e).__name__)
            if acting and not self.holding():
                log.error("could not renew the lease %s/%s for %.0f s: not acting until it is "
                          "renewed", self.namespace, self.name, time.monotonic() - self._renewed)
                acting = False

    def release(self) -> None:
        """Stop renewing and hand the Lease back, so a standby takes over at once. Best effort
        and bounded (RELEASE_SECONDS in all): at shutdown the API server may be unreachable,
        and a cleanup that hung or raised would keep the process from exiting within its
        grace period (kopf retries a failed cleanup). The lease then simply expires."""
        self._stop.set()

        def hand_back() -> None:
            try:
                lease = self.leases.read_namespaced_lease(self.name, self.namespace,
                                                          _request_timeout=RELEASE_SECONDS)
                if lease.spec is not None and lease.spec.holder_identity == self.identity:
                    lease.spec.holder_identity = None
                    lease.spec.renew_time = None
                    self.leases.replace_namespaced_lease(self.name, self.namespace, lease,
                                                         _request_timeout=RELEASE_SECONDS)
            except Exception as e:  # refused, timed out, unreachable
                log.warning("could not release the lease (%s); it expires in %d s",
                            type(e).__name__, LEASE_SECONDS)

        worker = threading.Thread(target=hand_back, daemon=True, name="lease-release")
        worker.start()
        worker.join(RELEASE_SECONDS)
        if worker.is_alive():  # the client retries on its own: do not wait for it
            log.warning("the API server did not answer within %g s: leaving the lease to "
                        "expire in %d s", RELEASE_SECONDS, LEASE_SECONDS)


@contextlib.contextmanager
def standby_health(url: str) -> Iterator[None]:
    """Answer the liveness probe while standing by: kopf serves it only once it runs, and a
    standby that failed its probe would be restarted over and over."""
    parsed = urllib.parse.urlsplit(url)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == parsed.path else 404)
            self.end_headers()
            self.wfile.write(b"standing by\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80),
                                             Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="standby-health")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
