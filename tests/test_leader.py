"""Leader election's shutdown: handing the lease back never holds the process up."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from agentgraph.controller import leader
from agentgraph.planner import solve
from builders import ROOT


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


class FakeLeases:
    """The three Lease calls Leader makes, in memory; every renewal's time is kept."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.renewals: list[float] = []

    down = False  # the API server unreachable

    def read_namespaced_lease(self, name: str, namespace: str, **_: object) -> client.V1Lease:
        if self.down:
            raise ConnectionRefusedError("the API server is away")
        if self.lease is None:
            raise client.ApiException(status=404)
        return self.lease

    def create_namespaced_lease(self, namespace: str, body: client.V1Lease,
                                **_: object) -> None:
        self.lease = body
        self.renewals.append(time.monotonic())

    def replace_namespaced_lease(self, name: str, namespace: str, body: client.V1Lease,
                                 **_: object) -> None:
        self.lease = body
        self.renewals.append(time.monotonic())


def test_a_solve_longer_than_the_lease_never_starves_its_renewal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The solve runs in the reconciling thread; the lease is renewed from another. HiGHS
    releases the GIL while it works, so renewals keep their pace through a solve several
    times longer than the lease (a starved one would have made the leader exit)."""
    monkeypatch.setattr(leader, "LEASE_SECONDS", 1)  # whole seconds, as the Lease takes
    exits: list[int] = []
    monkeypatch.setattr(leader.os, "_exit", exits.append)
    sys.path.insert(0, str(ROOT / "bench"))
    import planner_bench

    profiles = planner_bench.pools()
    graph = planner_bench.generated(500, 5, profiles, 1.5, "agents")  # about 4 s here
    fake = FakeLeases()
    lead = leader.Leader(client.ApiClient(client.Configuration()), "ns", identity="me")
    lead.leases = fake  # type: ignore[assignment]
    lead.acquire(timeout=5)
    started = time.monotonic()
    plan = solve.plan(graph, profiles)
    took = time.monotonic() - started
    lead.release()
    assert plan.feasible
    assert took > 2 * leader.LEASE_SECONDS, f"the solve took {took:.2f} s: not a long one"
    during = [t for t in fake.renewals if started <= t <= started + took]
    assert len(during) >= took / leader.LEASE_SECONDS  # one every third of the lease, about
    gaps = [b - a for a, b in zip([started, *during], [*during, started + took], strict=True)]
    assert max(gaps) < leader.LEASE_SECONDS * 2 / 3 + 0.5, gaps
    assert exits == []


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_api_server_outage_pauses_the_leader_and_it_goes_on_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "LEASE_SECONDS", 1)
    exits: list[int] = []
    monkeypatch.setattr(leader.os, "_exit", exits.append)
    fake = FakeLeases()
    lead = leader.Leader(client.ApiClient(client.Configuration()), "ns", identity="me")
    lead.leases = fake  # type: ignore[assignment]
    lead.acquire(timeout=5)
    assert lead.holding()
    fake.down = True
    _wait("the leader to stop acting", lambda: not lead.holding(), 5)
    fake.down = False  # back, and the Lease is still ours
    _wait("the leader to act again", lead.holding, 5)
    assert exits == []
    # Away again, and meanwhile another replica took the Lease: this one must go.
    fake.down = True
    _wait("the leader to stop acting", lambda: not lead.holding(), 5)
    assert fake.lease is not None and fake.lease.spec is not None
    fake.lease.spec.holder_identity = "other"
    fake.lease.spec.renew_time = leader._now()
    fake.down = False
    _wait("the exit", lambda: 3 in exits, 5)
    lead._stop.set()
