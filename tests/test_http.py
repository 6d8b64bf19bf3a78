"""The runtime's HTTP/1.1 server and client, checked against the standard library's client and
server (interoperability), raw sockets (pipelining, malformed input) and each other."""

from __future__ import annotations

import asyncio
import http.server as stdlib_http
import json
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop

from agentgraph.runtime import http

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS), autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on asyncio's loop and on uvloop (what the runtime uses)."""
    global new_loop
    new_loop = LOOPS[request.param]
    yield request.param


new_loop = asyncio.new_event_loop


def run(main: Any) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


async def _echo(request: http.Request) -> http.Response:
    return http.Response.json({"method": request.method, "path": request.path,
                               "query": request.query, "body": request.json(),
                               "header": request.headers.get("x-test")})


async def _count(request: http.Request) -> http.StreamResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(int(request.query.split("=")[1])):
            yield b'{"i": %d}\n' % i
            await asyncio.sleep(0)

    return http.StreamResponse(chunks())


class Background:
    """An event loop in a thread running a Server, for clients that block (urllib, sockets)."""

    def __init__(self, server: http.Server) -> None:
        self.server = server
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(
            server.listen("127.0.0.1", 0), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(1), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture()
def served() -> Iterator[Background]:
    bg = Background(http.Server({("GET", "/echo"): _echo, ("POST", "/echo"): _echo,
                                 ("GET", "/count"): _count}))
    yield bg
    bg.stop()


def test_stdlib_client_gets_json_and_the_errors_are_json(served: Background) -> None:
    base = f"http://127.0.0.1:{served.port}"
    req = urllib.request.Request(f"{base}/echo?a=1", data=b'{"x": 2}', method="POST",
                                 headers={"X-Test": "yes", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.load(r) == {"method": "POST", "path": "/echo", "query": "a=1",
                                "body": {"x": 2}, "header": "yes"}
    for path, method, code in (("/nowhere", "GET", 404), ("/echo", "DELETE", 405)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=5)
        assert e.value.code == code
        assert "reason" in json.load(e.value)["error"]


def test_stdlib_client_reads_a_chunked_stream(served: Background) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/count?n=5", timeout=5) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert [json.loads(line)["i"] for line in r.read().splitlines()] == [0, 1, 2, 3, 4]


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_pipelined_requests_are_answered_in_order(served: Background) -> None:
    requests = b"".join(
        b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    out = _raw(served.port, requests + b"GET /echo?n=last HTTP/1.1\r\nHost: x\r\n"
               b"Connection: close\r\n\r\n")
    queries = [json.loads(part.split(b"\r\n\r\n", 1)[1])["query"]
               for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert queries == [f"n={i}" for i in range(5)] + ["n=last"]


def test_malformed_and_oversized_requests_are_refused() -> None:
    bg = Background(http.Server({("POST", "/echo"): _echo}, max_body=100))
    try:
        assert _raw(bg.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
        big = b"x" * 500
        out = _raw(bg.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(big), big))
        assert out.startswith(b"HTTP/1.1 413") and b"over 100 bytes" in out
    finally:
        bg.stop()


def test_client_reuses_connections_and_streams() -> None:
    async def main() -> None:
        peers: set[str] = set()

        async def echo(request: http.Request) -> http.Response:
            peers.add(request.peer)  # the client's address and port: one per connection
            return await _echo(request)

        server = http.Server({("POST", "/echo"): echo, ("GET", "/count"): _count})
        port = await server.listen("127.0.0.1", 0)
        client = http.Client()
        for i in range(20):
            r = await client.post_json(f"http://127.0.0.1:{port}/echo", {"i": i})
            assert r.status == 200 and r.json()["body"] == {"i": i}
        assert len(peers) == 1  # one keep-alive connection for 20 requests
        many = await asyncio.gather(*(client.post_json(f"http://127.0.0.1:{port}/echo", i)
                                      for i in range(50)))
        assert [r.json()["body"] for r in many] == list(range(50))
        async with client.stream("GET", f"http://127.0.0.1:{port}/count?n=3") as (head, body):
            assert head.status == 200
            lines = b"".join([c async for c in body]).splitlines()
        assert [json.loads(x)["i"] for x in lines] == [0, 1, 2]
        client.close()
        await server.shutdown(1)

    run(main)


def test_client_retries_a_stale_keep_alive_connection_once() -> None:
    async def main() -> None:
        server = http.Server({("POST", "/echo"): _echo}, idle_timeout=0.05)
        port = await server.listen("127.0.0.1", 0)
        client = http.Client()
        await client.post_json(f"http://127.0.0.1:{port}/echo", 1)
        await asyncio.sleep(0.3)  # the server closes the idle connection meanwhile
        r = await client.post_json(f"http://127.0.0.1:{port}/echo", 2)
        assert r.json()["body"] == 2
        client.close()
        await server.shutdown(1)

    run(main)


def test_refused_connection_is_marked_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused

        async def main() -> None:
            with pytest.raises(http.HTTPError) as e:
                await http.Client().post_json(f"http://127.0.0.1:{port}/x", {})
            assert e.value.sent is False

        run(main)


def test_client_speaks_to_the_stdlib_server() -> None:
    class Handler(stdlib_http.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = json.dumps({"got": json.loads(body)}).encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = stdlib_http.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async def main() -> None:
            client = http.Client()
            for i in range(3):
                r = await client.post_json(f"http://127.0.0.1:{server.server_port}/", [i])
                assert (r.status, r.json()) == (201, {"got": [i]})
            client.close()

        run(main)
    finally:
        server.shutdown()


def test_a_handler_is_cancelled_when_its_client_goes_away() -> None:
    cancelled = asyncio.Event()

    async def slow(request: http.Request) -> http.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return http.Response.json({})

    async def main() -> None:
        server = http.Server({("GET", "/slow"): slow})
        port = await server.listen("127.0.0.1", 0)
        client = http.Client()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.request("GET", f"http://127.0.0.1:{port}/slow")
        await asyncio.wait_for(cancelled.wait(), 5)
        await server.shutdown(1)

    run(main)


def test_lines_joins_chunks_skips_blanks_and_drops_a_cut_off_tail() -> None:
    async def chunks() -> Any:
        for c in (b'{"a":', b' 1}\n\n{"b": 2}\n{"c"', b": 3}\n{\"cut"):
            yield c

    async def main() -> list[bytes]:
        return [line async for line in http.lines(chunks())]

    assert asyncio.run(main()) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
