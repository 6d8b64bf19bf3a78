"""Leader election's shutdown: handing the lease back never holds the process up."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from agentgraph.controller import leader


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: an API server that hangs."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    srv.close()


def _leader(host: str) -> leader.Leader:
    config = client.Configuration()
    config.host = host
    return leader.Leader(client.ApiClient(config), "ns")


@pytest.mark.parametrize("where", ["refused", "hangs"])
def test_release_returns_whatever_the_api_server_does(where: str, silent_server: str) -> None:
    host = "http://127.0.0.1:1" if where == "refused" else silent_server
    done = threading.Event()
    errors: list[BaseException] = []

    def release() -> None:
        try:
            _leader(host).release()
        except BaseException as e:  # a cleanup that raises is retried by kopf: never
            errors.append(e)
        done.set()

    threading.Thread(target=release, daemon=True).start()
    # well inside a pod's default 30 s grace period, whatever the client's own retries do
    assert done.wait(leader.RELEASE_SECONDS + 5), "release() did not return"
    assert errors == []
