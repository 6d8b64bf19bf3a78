"""SIGTERM while the API server cannot be reached: the operator still exits within a pod's
grace period. (Seen before: handing the Lease back was retried every 60 s and the process never
exited.) The operator reaches the API server through a TCP proxy on loopback that this test
then stops relaying: every connection, old or new, is accepted and never answered, as with a
server that hangs."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Kube, Operator, wait_for

GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds (the chart keeps it)
LEASE_WAIT_S = 60.0  # the Lease a previous module's operator held may take its 15 s to expire


class Proxy:
    """Relays 127.0.0.1:<port> to the API server until ``cut()``; then relays nothing."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.relaying = threading.Event()
        self.relaying.set()
        self.closing = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                ready, _, _ = select.select([self.server], [], [], 0.2)
                if not ready:
                    continue
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.held.append(conn)
            if self.relaying.is_set():
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), socket.create_connection(self.target) as upstream:
            self.held.append(upstream)
            while self.relaying.is_set() and not self.closing.is_set():
                ready, _, _ = select.select([conn, upstream], [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (upstream if src is conn else conn).sendall(data)

    def cut(self) -> None:
        self.relaying.clear()

    def close(self) -> None:
        self.closing.set()
        for s in [self.server, *self.held]:
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def proxied(tmp_path: Path) -> Iterator[tuple[Proxy, str]]:
    """A copy of $KUBECONFIG whose server is the proxy (same host: the certificate holds)."""
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == current["context"]["cluster"])
    url = urllib.parse.urlsplit(cluster["cluster"]["server"])
    if url.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("the API server is not on this machine's loopback")
    proxy = Proxy((url.hostname, url.port or 443))
    cluster["cluster"]["server"] = f"https://{url.hostname}:{proxy.port}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    try:
        yield proxy, str(path)
    finally:
        proxy.close()


def test_sigterm_with_the_api_server_unreachable_exits_within_the_grace_period(
        kube: Kube, tmp_path: Path) -> None:
    operator = Operator(tmp_path)
    with proxied(tmp_path) as (proxy, kubeconfig):
        proc = operator.start(port=18091, kubeconfig=kubeconfig)
        try:
            def leading() -> bool:
                found = kube.attempt("get", "lease", "agentgraph-operator", "-n", "default",
                                 "-o", "jsonpath={.spec.holderIdentity}")
                return found.stdout.strip().endswith(f"-{proc.pid}")

            wait_for("the operator to hold the Lease", leading, LEASE_WAIT_S)
            proxy.cut()
            time.sleep(2)  # its renewals and watches now hang
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except Exception:
                print(operator.log(0)[-4000:])
                raise
            took = time.monotonic() - started
        finally:
            Operator.stop(proc, signal.SIGKILL)
    assert took < GRACE_S, f"exited after {took:.1f} s"
    print(f"exited {took:.1f} s after SIGTERM with the API server unreachable")
