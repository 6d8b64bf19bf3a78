"""A small HTTP/1.1 server and pooled client on asyncio protocols, parsed by httptools.

Why not aiohttp: the gateway makes one client call per step of every request, and measured here
aiohttp spent about 500 us of CPU per request through a 5-step graph against about 70 us for
protocols driven by httptools (the parser uvicorn uses). The fast path is the product, so it
gets the lean stack; everything it needs is here: keep-alive, pipelined requests answered in
order, bounded bodies, chunked streaming both ways, write back-pressure, cancellation of a
handler whose client went away, idle timeouts, and TLS for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

log = logging.getLogger("agentgraph.http")
MAX_BODY = 16 * 2**20  # bytes of a request or response body held in memory
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with nothing to do is closed after this
MAX_PIPELINED = 32  # requests queued on one connection before it stops reading


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def json(obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None,
             ) -> Response:
        return Response(status, orjson.dumps(obj), headers=headers or [])


@dataclass
class StreamResponse:
    """A chunked response: ``chunks`` is consumed and written as it yields."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/x-ndjson"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Called once the response is over, written or not (the client may be gone before the
    # first chunk): what the stream holds is released here.
    on_close: Callable[[], None] | None = None


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def _head(status: int, content_type: str, headers: list[tuple[str, str]], length: int | None,
          close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    if close:
        lines.append("Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Flow:
    """Write back-pressure: await ``drain`` after a write while the transport's buffer is full."""

    def __init__(self) -> None:
        self._resumed: asyncio.Future[None] | None = None
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def lost(self, exc: BaseException | None) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_exception(exc or ConnectionResetError("connection lost"))

    async def drain(self) -> None:
        if self.paused:
            self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.flow = _Flow()
        self.queue: deque[tuple[Request, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.peer = ""
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed request: {e}")
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.flow.lost(exc)
        if self.idle is not None:
            self.idle.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: stop working for it
        self.transport = None

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks -------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_body:
            self.too_large = True
            self.body = []
        elif not self.too_large:
            self.body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url)
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self.headers, body=b"".join(self.body), peer=self.peer)
        keep_alive = self.parser.should_keep_alive() and not self.server.closing
        if self.too_large:
            self._reset()
            self._fail(413, f"request body over {self.server.max_body} bytes")
            return
        self._reset()
        self.queue.append((request, keep_alive))
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._serve())

    # serving -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        while self.queue and self.transport is not None:
            request, keep_alive = self.queue.popleft()
            if self.transport is not None and len(self.queue) < MAX_PIPELINED:
                self.transport.resume_reading()
            self.server.in_flight += 1
            response: Response | StreamResponse | None = None
            try:
                response = await self.server.dispatch(request)
                await self._write(response, close=not keep_alive)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a writer failure: the connection is gone
                log.info("writing the response to %s %s failed: %s", request.method,
                         request.path, e)
                self._close()
                return
            finally:
                self.server.in_flight -= 1
                if isinstance(response, StreamResponse) and response.on_close is not None:
                    response.on_close()
            if not keep_alive:
                self._close()
                return

    async def _write(self, response: Response | StreamResponse, close: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if isinstance(response, Response):
            transport.write(_head(response.status, response.content_type, response.headers,
                                  len(response.body), close) + response.body)
            await self.flow.drain()
            return
        transport.write(_head(response.status, response.content_type, response.headers,
                              None, close))
        try:
            async for chunk in response.chunks:
                if not chunk:
                    continue
                if self.transport is None:
                    raise ConnectionResetError("client went away")
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await self.flow.drain()
        finally:
            aclose = getattr(response.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None:
            body = orjson.dumps({"error": {"reason": message}})
            self.transport.write(_head(status, "application/json", [], len(body), True) + body)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.idle_timeout,
                                                          self._on_idle)

    def _on_idle(self) -> None:
        if (self.task is None or self.task.done()) and not self.queue:
            self._close()
        else:
            self._arm_idle()


class Server:
    """Routes (method, path) to handlers; a path ending in "/" is a prefix. An unknown path is
    404, a known one with another method 405. A handler's exception becomes a 500 with the
    message (and a log line)."""

    def __init__(self, routes: Mapping[tuple[str, str], Handler], max_body: int = MAX_BODY,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.routes = dict(routes)
        self.paths = {path for _, path in routes}
        self.prefixes = [(method, path) for method, path in routes if path.endswith("/")]
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[_ServerConnection] = set()
        self.in_flight = 0
        self.closing = False
        self._servers: list[asyncio.Server] = []

    async def dispatch(self, request: Request) -> Response | StreamResponse:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            prefix = next((key for key in self.prefixes
                           if request.path.startswith(key[1])), None)
            if prefix is not None and prefix[0] == request.method:
                handler = self.routes[prefix]
        if handler is None:
            if request.path in self.paths or any(request.path.startswith(p)
                                                 for _, p in self.prefixes):
                return Response.json({"error": {"reason": f"{request.method} not allowed"}}, 405)
            return Response.json({"error": {"reason": f"no route {request.path}"}}, 404)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            return Response.json({"error": {"reason": f"internal error: {e}"}}, 500)

    async def listen(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ServerConnection(self), host, port,
                                          reuse_address=True, backlog=1024)
        self._servers.append(server)
        sock = server.sockets[0]
        return int(sock.getsockname()[1])

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, close."""
        self.closing = True
        for server in self._servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn._close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


# ---------------------------------------------------------------------------------- client


class HTTPError(Exception):
    """Transport-level failure. ``sent`` is False when the request surely never reached a
    server (connection refused, or a reused idle connection closed under us): safe to retry
    anywhere, whatever the request's idempotency."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class ClientResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


_END = b""


class _ClientConnection(asyncio.Protocol):
    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.flow = _Flow()
        self.reused = False
        self._begin(None)

    def _begin(self, chunks: asyncio.Queue[bytes | BaseException] | None) -> None:
        self.headers: dict[str, str] = {}
        self.chunks = chunks
        self.got_bytes = False
        self.complete = False
        self.keep_alive = False
        self.headers_done: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._error(HTTPError(f"malformed response: {e}", sent=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.flow.lost(exc)
        if not self.complete:
            self._error(HTTPError(f"connection closed ({exc or 'EOF'})",
                                  sent=not (self.reused and not self.got_bytes)))

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Read here: llhttp answers should_keep_alive() only inside its callbacks (after the
        # message it says False, and no connection would ever be reused).
        self.keep_alive = self.parser.should_keep_alive()
        if self.chunks is not None:
            self.chunks.put_nowait(_END)

    def _error(self, exc: BaseException) -> None:
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_exception(exc)
        if self.chunks is not None:
            self.chunks.put_nowait(exc)

    @property
    def reusable(self) -> bool:
        return self.transport is not None and self.complete and self.keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Client:
    """Keep-alive connections per (scheme, host, port), reused last-in first-out."""

    def __init__(self, max_idle_per_host: int = 256, ssl_context: ssl.SSLContext | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.max_idle = max_idle_per_host
        self.ssl = ssl_context
        self.max_body = max_body
        self._idle: dict[tuple[str, str, int], list[_ClientConnection]] = {}

    async def _connect(self, key: tuple[str, str, int]) -> _ClientConnection:
        scheme, host, port = key
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self.ssl or ssl.create_default_context()
        try:
            _, conn = await loop.create_connection(
                lambda: _ClientConnection(key), host, port, ssl=context,
                server_hostname=host if context else None)
        except OSError as e:
            raise HTTPError(f"cannot connect to {host}:{port}: {e.strerror or e}",
                            sent=False) from e
        return conn

    def _release(self, conn: _ClientConnection) -> None:
        if not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
        else:
            idle.append(conn)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, body: bytes = b"",
                     headers: Mapping[str, str] | None = None,
                     ) -> AsyncIterator[tuple[ClientResponse, AsyncIterator[bytes]]]:
        """Send a request; yield the response head and an iterator over its body chunks. The
        connection goes back to the pool only when the body was read to the end."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (scheme, host, port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}",
                 f"Content-Length: {len(body)}"]
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            conn = await self._connect(key)
            chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
            conn._begin(chunks)
            conn.headers_done = asyncio.get_running_loop().create_future()
            try:
                assert conn.transport is not None
                conn.transport.write(head + body)
                status = await conn.headers_done
            except HTTPError as e:
                conn.close()
                if not e.sent and conn.reused and attempt == 0:
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise
            except BaseException:
                conn.close()
                raise
            break
        done = False

        async def body_chunks() -> AsyncIterator[bytes]:
            nonlocal done
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    done = True
                    return
                yield item

        try:
            yield ClientResponse(status, conn.headers), body_chunks()
        finally:
            if done:
                self._release(conn)
            else:
                conn.close()

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> ClientResponse:
        async with self.stream(method, url, body, headers) as (response, chunks):
            parts: list[bytes] = []
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_body:
                    raise HTTPError(f"response body over {self.max_body} bytes", sent=True)
                parts.append(chunk)
            response.body = b"".join(parts)
            return response

    async def post_json(self, url: str, obj: Any, headers: Mapping[str, str] | None = None,
                        ) -> ClientResponse:
        return await self.request("POST", url, orjson.dumps(obj),
                                  {"Content-Type": "application/json", **(headers or {})})

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The complete, non-blank lines of a chunked body (NDJSON, server-sent events), as they
    arrive; a last line without its newline is a cut-off stream and is dropped."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *done, buffer = buffer.split(b"\n")
        for line in done:
            if line.strip():
                yield line


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main`` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the runtime extra
        return asyncio.run(main())
    return uvloop.run(main())
