"""The HTTP client deliveries are made with: HTTP/1.1 POSTs over connections kept alive per
receiver, guarded against internal targets, that turn whatever the receiver or the network
does into an `AttemptResult` (never raising for them).

Why not aiohttp's `ClientSession`: a delivery is always the same small exchange (one POST,
a status, at most 4 KiB of answer), and the session's general machinery (request and
response objects, cookie, redirect and proxy handling, trace signals) cost more CPU than
everything else a delivery does together (docs/architecture.md, "Why": the delivery client).
Here a request is one write of pre-formatted bytes and the answer is parsed by `httptools`
(llhttp, the parser Node.js uses). What the session did for us is kept, each in one place:
- the SSRF guard: addresses come from `GuardedResolver` (cached 10 s, as aiohttp's
  `ttl_dns_cache` did), and a literal address is checked by `literal_host_refusal`;
- TLS with the system's default verification (`ssl.create_default_context`);
- redirects never followed, answers never decompressed (`Accept-Encoding: identity`), no
  cookies, no proxy from the environment;
- one total timeout per attempt, connecting included;
- at most 4 KiB of an answer read: a longer one's connection is dropped, not drained, and
  response headers are bounded (`MAX_HEAD_BYTES`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from typing import NamedTuple

import httptools
from yarl import URL

from router.core import tracing
from router.core.outcome import AttemptResult
from router.core.retry import parse_retry_after
from router.core.targets import host_address, literal_host_refusal
from router.pipeline.targets import GuardedResolver, TargetRefused
from router.settings import Settings

RESPONSE_BODY_LIMIT = 4096
MAX_HEAD_BYTES = 65536  # a receiver's status line and headers, at most (aiohttp: 8 KiB a line)
DNS_TTL = 10.0  # seconds an origin's guarded addresses are reused
IDLE_SECONDS = 15.0  # an idle kept-alive connection older than this is closed, not reused
MAX_URLS = 10_000  # parsed subscriber URLs kept; cleared beyond
FIXED_HEADERS = "Accept: */*\r\nAccept-Encoding: identity\r\n"


class _Origin(NamedTuple):
    """A subscriber URL, parsed once: where to connect and the request line and Host."""

    key: tuple[str, str, int]  # scheme, host, port: connections are pooled by it
    host: str  # as resolved and connected to (no brackets)
    port: int
    tls: bool
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\n" and the fixed headers


def _origin(url: str) -> _Origin:
    parsed = URL(url)  # as aiohttp parsed it: subscriber URLs are stored in that normal form
    host = parsed.raw_host or ""
    port = parsed.port or 0
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if parsed.is_default_port() else f"{shown}:{port}"
    head = f"POST {parsed.raw_path_qs} HTTP/1.1\r\nHost: {host_header}\r\n{FIXED_HEADERS}"
    scheme = parsed.scheme
    return _Origin((scheme, host, port), host, port, scheme == "https", head.encode())


class _Answer(NamedTuple):
    status: int
    body: bytes
    retry_after: str | None


class ReceiverClosed(ConnectionError):
    """The receiver closed the connection before it had answered."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a receiver; one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[_Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._head_bytes = 0
        self._headers_done = False
        self._status = 0
        self._retry_after: str | None = None
        self._body: list[bytes] = []
        self._size = 0

    # ------------------------------------------------------------ exchange
    def send(self, data: bytes, waiter: asyncio.Future[_Answer]) -> None:
        assert self.transport is not None
        self._reset()
        self._waiter = waiter
        self.transport.write(data)

    def _answer(self, *, reusable: bool) -> None:
        """Hand the answer to its waiter; a connection that cannot carry another exchange is
        closed, so `closed` alone tells whether it may be kept."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(_Answer(self._status, b"".join(self._body), self._retry_after))
        if not reusable:
            self.close()

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def kept_at(self, now: float) -> bool:
        """True if this idle connection may still be reused at `now`."""
        return not self.closed and now - self.idle_since < IDLE_SECONDS

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a receiver that talks out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ValueError(f"invalid HTTP response: {exc}"))
            return
        if not self._headers_done and self._waiter is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ValueError("response headers too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        if self._headers_done:
            self._answer(reusable=False)  # an answer whose body ran to the connection's end
        else:
            self._fail(exc or ReceiverClosed("the receiver closed the connection unanswered"))

    # ------------------------------------------------------------ httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._headers_done = self._status >= 200  # a 1xx is followed by the real answer

    def on_body(self, body: bytes) -> None:
        if self._size < RESPONSE_BODY_LIMIT:
            self._body.append(body[: RESPONSE_BODY_LIMIT - self._size])
        self._size += len(body)
        if self._size >= RESPONSE_BODY_LIMIT:
            self._answer(reusable=False)  # enough read: drop the connection, not drain it

    def on_message_complete(self) -> None:
        if self._status < 200:
            self._reset()
            return
        if self._waiter is not None:
            self._answer(reusable=self.parser.should_keep_alive())


def _time_out(waiter: asyncio.Future[_Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class DeliveryClient:
    """A worker's connections to receivers, and the POST each attempt makes."""

    def __init__(
        self, *, allow_private: bool, timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        """`tls`: how https receivers are verified (default: the system's trust roots)."""
        self.allow_private = allow_private
        self.timeout = timeout
        self.closed = False
        self._resolver = GuardedResolver(allow_private)
        self._ssl = tls
        self._origins: dict[str, _Origin] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._swept = time.monotonic()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
        """POST once; never raises for anything the receiver or the network does."""
        if not self.allow_private and (reason := literal_host_refusal(url)):
            return AttemptResult(None, f"refused target: {reason}", 0.0, "", None)
        tracing.inject(headers)  # the attempt's span, so the receiver's spans join the trace
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        text = ""
        retry_after = None
        try:
            answer = await self._exchange(url, body, headers)
            status = answer.status
            text = answer.body.decode("utf-8", "replace")
            if status in (429, 503):
                retry_after = parse_retry_after(answer.retry_after)
            if 300 <= status < 400:
                error = "redirects are not followed"
        except TimeoutError:
            error = f"timed out after {self.timeout:g}s"
        except TargetRefused as exc:
            error = exc.strerror
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration = (time.perf_counter() - started) * 1000
        return AttemptResult(status, error, round(duration, 2), text, retry_after)

    async def _exchange(self, url: str, body: bytes, headers: dict[str, str]) -> _Answer:
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) >= MAX_URLS:
                self._origins.clear()
            origin = self._origins[url] = _origin(url)
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header name or value contains a line break")
        request = b"".join(
            (origin.head, lines.encode(), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout  # one timeout for connecting and the exchange
        conn = self._idle_connection(origin.key)
        if conn is None:
            async with asyncio.timeout_at(deadline):
                conn = await self._connect(origin)
        # A timer on the answer's future, not `asyncio.timeout` around the await: that one's
        # task cancellation and rescheduling cost a few percent of a delivery's CPU.
        waiter: asyncio.Future[_Answer] = loop.create_future()
        timer = loop.call_at(deadline, _time_out, waiter)
        conn.send(request, waiter)
        try:
            answer = await waiter
        except BaseException:
            self._drop(conn)  # timed out or cancelled mid-exchange: the connection is unusable
            raise
        finally:
            timer.cancel()
        now = time.monotonic()
        if conn.closed or self.closed:
            self._drop(conn)
        else:
            conn.idle_since = now
            self._idle.setdefault(origin.key, deque()).append(conn)
        if now - self._swept > IDLE_SECONDS:
            self._sweep(now)
        return answer

    def _sweep(self, now: float) -> None:
        """Close connections idle for longer than IDLE_SECONDS, whichever receiver they are
        to: one no longer delivered to would otherwise keep its connections open."""
        self._swept = now
        for key, idle in list(self._idle.items()):
            while idle and not idle[0].kept_at(now):
                self._drop(idle.popleft())  # the oldest first: the deque is in order of return
            if not idle:
                del self._idle[key]

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: least likely closed by the receiver
            if conn.kept_at(now):
                return conn
            self._drop(conn)
        return None

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls() if origin.tls else None
        last: OSError | None = None
        for host, port in await self._resolve(origin.host, origin.port):
            try:
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
            except OSError as exc:
                last = exc
                continue
            self._open.add(conn)
            return conn
        assert last is not None
        raise ConnectionError(
            f"cannot connect to {origin.host}:{origin.port}: {last.strerror or last}"
        ) from last

    async def _resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        """Where `host` may be connected to: an address as given, or what the guard leaves of
        its answers (raises `TargetRefused` if nothing is left)."""
        if host_address(host) is not None:
            return [(host, port)]
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        results = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        addresses = [(r["host"], r["port"]) for r in results]
        if len(self._addresses) >= MAX_URLS:
            self._addresses.clear()
        self._addresses[(host, port)] = (now + DNS_TTL, addresses)
        return addresses

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        self.closed = True
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
        await self._resolver.close()


def open_session(settings: Settings) -> DeliveryClient:
    """One client per worker: pooled connections, the SSRF guard on every resolve."""
    return DeliveryClient(
        allow_private=settings.allow_private_targets, timeout=settings.delivery_timeout
    )
