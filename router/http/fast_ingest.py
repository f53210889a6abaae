"""`serve`'s connections: `POST /webhooks` parsed below aiohttp's web server.

Ingest is the hot path, and most of an accepted event's CPU went to aiohttp's web server:
its request, payload stream, response and writer objects, for a request that is always the
same small POST answered with a small JSON body. A connection therefore starts on
`IngestProtocol`. While every request on it is a plainly framed `POST /webhooks` that has
arrived whole, the protocol checks its head with llhttp (`httptools`, the parser aiohttp's
own is built on), hands the headers and body to the ingest route's own code
(`router.http.routes.ingest.answer`) and writes the answer itself.

The first request that is anything else goes, with everything after it on that connection,
to aiohttp's handler for the app, from that request's first byte: another method, path or
query; HTTP/1.0; no `Host`, or two; `Expect`, `Transfer-Encoding`, `Content-Encoding` or
`Upgrade`; no `Content-Length`, or one over `ROUTER_MAX_BODY_BYTES`; a head over aiohttp's
line limit or with more headers than it takes; a head llhttp refuses; or a request not yet
whole when the bytes that arrived end (a client trickling its body meets aiohttp's 408).
From there the connection is served exactly as aiohttp serves every other: the 413s, 408s
and malformed-request envelopes are aiohttp's, through `router.http.server`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy

from router.http.context import SETTINGS
from router.http.operations import operation_of_handler
from router.http.routes.ingest import Arrival, answer

INGEST_PATH = "/webhooks"
# The only request line taken here: the exact path, no query, HTTP/1.1.
_REQUEST_LINE = b"POST " + INGEST_PATH.encode() + b" HTTP/1.1\r\n"
_HEAD_END = b"\r\n\r\n"
# aiohttp's own limits (`max_line_size`, `max_headers`): a head that could exceed either is
# left to aiohttp, so that what it refuses is refused as before.
MAX_HEAD_BYTES = 8190
MAX_HEADERS = 100
# Headers that change how the body is framed or read, or what the connection becomes.
_LEFT_TO_AIOHTTP = frozenset({b"expect", b"transfer-encoding", b"content-encoding", b"upgrade"})
_UTF8, _ESCAPE = "utf-8", "surrogateescape"
# Unanswered requests' bytes held while one is being answered (a client pipelining).
MAX_BUFFERED = 1 << 20


def ingest_route_declared(app: web.Application) -> bool:
    """Whether `app` has the `POST /webhooks` route (apps built for tests may not). Raises
    RuntimeError if it needs credentials: requests parsed here meet no middleware."""
    for route in app.router.routes():
        resource = route.resource
        if route.method == "POST" and resource is not None and resource.canonical == INGEST_PATH:
            op = operation_of_handler(route.handler)
            if op is None or op.scope is not None:
                raise RuntimeError(f"POST {INGEST_PATH} must be declared with scope=None")
            return True
    return False


class _Head:
    """llhttp's callbacks for one request head: its headers, and whether it ended where
    the blank line was found."""

    __slots__ = ("begun", "complete", "headers", "overran")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.begun = False
        self.complete = False
        self.overran = False

    def on_message_begin(self) -> None:
        if self.begun:  # a second request began before the blank line we found
            self.overran = True
        self.begun = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        self.overran = True  # the head ended before the blank line we found


class _Message:
    __slots__ = ("body", "headers", "keep_alive", "length")

    def __init__(
        self, headers: CIMultiDictProxy[str], body: bytes, keep_alive: bool, length: int
    ) -> None:
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.length = length

    async def read(self) -> bytes:
        return self.body


def parse(buffer: bytes, max_body: int) -> _Message | None:
    """The whole ingest request at the start of `buffer`, or None if it is anything else
    (or not whole yet): that request is then aiohttp's."""
    if not buffer.startswith(_REQUEST_LINE):
        return None
    end = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES + len(_HEAD_END))
    if end < 0:
        return None
    head_length = end + len(_HEAD_END)
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(memoryview(buffer)[:head_length])
    except httptools.HttpParserError:
        return None
    if not head.complete or head.overran or len(head.headers) > MAX_HEADERS:
        return None
    content_length, hosts = -1, 0
    pairs = []
    for name, value in head.headers:
        lowered = name.lower()
        if lowered in _LEFT_TO_AIOHTTP:
            return None
        if lowered == b"content-length":
            content_length = int(value)  # llhttp has checked it: digits, one value
        elif lowered == b"host":
            hosts += 1
        # As aiohttp decodes header bytes: undecodable ones survive as surrogates (and are
        # then refused by the ingest route, which names the header).
        pairs.append((name.decode(_UTF8, _ESCAPE), value.decode(_UTF8, _ESCAPE)))
    # HTTP/1.1 asks for one Host; aiohttp refuses a request without, llhttp does not.
    if content_length < 0 or content_length > max_body or hosts != 1:
        return None
    length = head_length + content_length
    if len(buffer) < length:
        return None
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    return _Message(headers, buffer[head_length:length], parser.should_keep_alive(), length)


def render(response: web.Response, keep_alive: bool) -> bytes:
    """`response` (a body already in bytes) as HTTP/1.1, with the headers aiohttp sends."""
    body = response.body
    assert isinstance(body, bytes)
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {rfc822_formatted_time()}")
    lines.append(f"Server: {SERVER_SOFTWARE}")
    if not keep_alive:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode() + body


class Server(Protocol):
    """What a connection needs of the server that made it (`router.http.server`)."""

    fast_connections: set[IngestProtocol]

    def aiohttp_handler(self) -> asyncio.Protocol: ...


class IngestProtocol(asyncio.Protocol):
    """One connection of `serve`, until a request on it is aiohttp's (module docstring)."""

    def __init__(self, server: Server, app: web.Application, keepalive_timeout: float):
        self._server = server
        self._app = app
        self._loop = asyncio.get_running_loop()
        self._max_body = app[SETTINGS].max_body_bytes
        self._keepalive_timeout = keepalive_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._answering: asyncio.Task[None] | None = None
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False
        self._closing = False

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        tcp_keepalive(transport)
        self._server.fast_connections.add(self)
        self._idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.fast_connections.discard(self)
        self._transport = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        # An answer in progress runs on: its event is then stored, and the platform's retry
        # of it is a duplicate.

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if self._answering is None:
            self._next()
        if len(self._buffer) > MAX_BUFFERED and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> None:
        # As aiohttp's handler: the transport closes; an answer in progress is not sent.
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._answering is None and self._transport is not None:
            self._next()

    # serving

    def _next(self) -> None:
        """Answer the next request buffered, hand the connection to aiohttp, or wait."""
        if not self._buffer or self._write_paused or self._closing:
            return
        message = parse(self._buffer, self._max_body)
        if message is None:
            self._hand_over()
            return
        self._buffer = self._buffer[message.length :]
        if self._read_paused and len(self._buffer) <= MAX_BUFFERED and self._transport:
            self._read_paused = False
            self._transport.resume_reading()
        arrival = Arrival(self._app, INGEST_PATH, message.headers, message.read)
        self._answering = self._loop.create_task(self._answer(arrival, message.keep_alive))

    async def _answer(self, arrival: Arrival, keep_alive: bool) -> None:
        response = await answer(arrival)
        self._answering = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        keep_alive = keep_alive and not self._closing
        transport.write(render(response, keep_alive))
        if not keep_alive:
            transport.close()
            return
        if self._buffer:
            self._next()
        else:
            self._idle()

    def _hand_over(self) -> None:
        """From the request at the start of the buffer on, the connection is aiohttp's."""
        transport = self._transport
        assert transport is not None
        self._server.fast_connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._read_paused:
            transport.resume_reading()
        handler = self._server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        buffered, self._buffer = self._buffer, b""
        handler.data_received(buffered)
        self._transport = None

    # idle connections and shutdown

    def _idle(self) -> None:
        """Close the connection if no request starts within the keep-alive timeout. One timer
        per connection, moved on when it fires early (not re-armed per request)."""
        self._idle_since = self._loop.time()
        if self._idle_timer is None and self._keepalive_timeout > 0:
            self._idle_timer = self._loop.call_at(
                self._idle_since + self._keepalive_timeout, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._transport is None or self._answering is not None or self._buffer:
            if self._transport is not None:
                self._idle()
            return
        deadline = self._idle_since + self._keepalive_timeout
        if self._loop.time() >= deadline:
            self._transport.close()
        else:
            self._idle_timer = self._loop.call_at(deadline, self._idle_check)

    def close(self) -> None:
        """Stop taking requests; close now if none is being answered, else once it is."""
        self._closing = True
        if self._answering is None and self._transport is not None:
            self._transport.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Close, giving a request being answered `timeout` seconds to finish."""
        self.close()
        if (answering := self._answering) is not None:
            try:
                await asyncio.wait_for(asyncio.shield(answering), timeout)
            except TimeoutError:
                answering.cancel()
        if self._transport is not None:
            self._transport.close()
