"""`serve`'s connections (`router.http.fast_ingest`): whole `POST /webhooks` requests are
parsed and answered below aiohttp's web server; the first request that is anything else, and
all after it, go to aiohttp with every byte they sent.

Each test talks raw bytes to the app served by `RouterRunner` (as `serve` serves it), and
reads which of the two took the connection from the server's own bookkeeping."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from router.http.app import create_app
from router.http.fast_ingest import MAX_HEAD_BYTES, parse
from router.http.server import RouterRunner, RouterServer
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import encode, platform_event

MAX_BODY = 100_000


@dataclass
class Served:
    port: int
    runner: RouterRunner
    redis: Redis
    key_prefix: str

    @property
    def server(self) -> RouterServer:
        server = self.runner.server
        assert isinstance(server, RouterServer)
        return server

    def takers(self) -> tuple[int, int]:
        """Open connections served here and by aiohttp."""
        return len(self.server.fast_connections), len(self.server.connections)


@pytest.fixture
async def served(redis: Redis, key_prefix: str) -> AsyncIterator[Served]:
    settings = make_settings(key_prefix, max_body_bytes=MAX_BODY, client_timeout=1.0)
    app = create_app(settings, redis=redis)
    runner = RouterRunner(app, access_log=None, handle_signals=False, keepalive_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Served(runner.addresses[0][1], runner, redis, key_prefix)
    finally:
        await runner.cleanup()


def event_body(**changes: Any) -> bytes:
    return encode(platform_event("ContactCreate", webhookId=str(uuid.uuid4()), **changes))


def ingest_request(body: bytes, *extra: bytes, path: bytes = b"/webhooks") -> bytes:
    lines = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Conn:
    """One client connection, reading answers one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names), body (Content-Length)."""
        while True:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if status != 100:
                break
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed(self) -> bool:
        """Whether the server closes the connection (EOF) within a few seconds."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except (TimeoutError, ConnectionError):
            return False

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def stored_body(served: Served, event_id: str) -> bytes:
    """The event's body as the operator API reads it back."""
    conn = await Conn.open(served.port)
    await conn.send(
        f"GET /v1/events/{event_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    status, _, body = await conn.answer()
    await conn.close()
    assert status == 200, body
    payload = body.split(b',"payload":', 1)[1]
    return payload[:-1]


async def accepted_ids(served: Served, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
    """Every answer a 202 for an event that is stored."""
    for status, _, body in answers:
        assert status == 202, body
        assert await stored_body(served, json.loads(body)["event_id"])


async def test_a_whole_ingest_request_is_answered_here_as_aiohttp_would(served: Served) -> None:
    conn = await Conn.open(served.port)
    await conn.send(ingest_request(event_body()))
    status, headers, body = await conn.answer()
    assert status == 202
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["date"])
    assert headers["server"].startswith("Python/")
    assert json.loads(body)["status"] == "accepted"
    assert served.takers() == (1, 0)
    await accepted_ids(served, [(status, headers, body)])
    await conn.close()


async def test_ingest_requests_on_one_kept_alive_connection_stay_here(served: Served) -> None:
    conn = await Conn.open(served.port)
    answers = []
    for _ in range(5):
        await conn.send(ingest_request(event_body()))
        answers.append(await conn.answer())
    await accepted_ids(served, answers)
    assert served.takers() == (1, 0)
    await conn.close()


async def test_pipelined_ingest_requests_are_answered_in_order(served: Served) -> None:
    bodies = [event_body() for _ in range(4)]
    conn = await Conn.open(served.port)
    await conn.send(b"".join(ingest_request(body) for body in bodies))
    answers = [await conn.answer() for _ in bodies]
    await accepted_ids(served, answers)
    for body, (_, _, answer) in zip(bodies, answers, strict=True):
        assert await stored_body(served, json.loads(answer)["event_id"]) == body
    assert served.takers() == (1, 0)
    await conn.close()


async def test_another_request_hands_the_connection_to_aiohttp_with_all_its_bytes(
    served: Served,
) -> None:
    conn = await Conn.open(served.port)
    await conn.send(ingest_request(event_body()))
    first = await conn.answer()
    # Pipelined behind a health check: both follow it to aiohttp, in order.
    await conn.send(HEALTH + ingest_request(event_body()))
    health = await conn.answer()
    last = await conn.answer()
    assert health[0] == 200 and json.loads(health[2])["status"] == "ok"
    await accepted_ids(served, [first, last])
    assert served.takers() == (0, 1)
    await conn.close()


async def test_a_connection_that_starts_elsewhere_is_aiohttp_s(served: Served) -> None:
    conn = await Conn.open(served.port)
    await conn.send(HEALTH)
    assert (await conn.answer())[0] == 200
    assert served.takers() == (0, 1)
    await conn.close()


# Requests the fast path must leave to aiohttp: each is answered as aiohttp answers it.
HANDED_OVER = [
    pytest.param(ingest_request(b"{}", path=b"/webhooks?x=1"), 202, id="query"),
    pytest.param(ingest_request(b"{}", path=b"/webhooks/ContactCreate"), 202, id="named"),
    pytest.param(ingest_request(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0"), 202, id="http-1.0"),
    pytest.param(ingest_request(b"{}", b"Expect: 100-continue"), 202, id="expect"),
    pytest.param(ingest_request(b"{}", b"Expect: something-else"), 417, id="expect-unknown"),
    pytest.param(b"x" * (MAX_BODY + 1), 413, id="too-large"),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}",
        400,
        id="two-lengths",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nX-Bad\x01Name: v\r\n\r\n{}",
        400,
        id="bad-header-name",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Long: " + b"v" * MAX_HEAD_BYTES + b"\r\nContent-Length: 2\r\n\r\n{}",
        422,  # long for this path, not for aiohttp: the body's `type` is missing
        id="long-head",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Long: " + b"v" * 9000 + b"\r\nContent-Length: 2\r\n\r\n{}",
        400,
        id="too-long-line",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"".join(f"X-H{i}: v\r\n".encode() for i in range(200))
        + b"Content-Length: 2\r\n\r\n{}",
        400,
        id="many-headers",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n",
        400,
        id="no-length",
    ),
    pytest.param(ingest_request(b"{}").replace(b"Host: 127.0.0.1\r\n", b""), 400, id="no-host"),
    pytest.param(ingest_request(b"{}", b"Host: other"), 400, id="two-hosts"),
]


@pytest.mark.parametrize(("request_bytes", "status"), HANDED_OVER)
async def test_requests_it_does_not_take_are_aiohttp_s(
    served: Served, request_bytes: bytes, status: int
) -> None:
    if status == 202:
        request_bytes = request_bytes.replace(
            b"Content-Length: 2", f"Content-Length: {len(body := event_body())}".encode()
        ).replace(b"\r\n\r\n{}", b"\r\n\r\n" + body)
    if request_bytes.startswith(b"x"):
        request_bytes = ingest_request(request_bytes)
    conn = await Conn.open(served.port)
    await conn.send(request_bytes)
    got, headers, body = await conn.answer()
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    if status >= 400:
        assert json.loads(body)["errors"][0]["extensions"]["code"]
    else:
        await accepted_ids(served, [(got, headers, body)])
    assert served.takers()[0] == 0
    await conn.close()


async def test_a_chunked_body_is_accepted_through_aiohttp(served: Served) -> None:
    body = event_body()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    raw = (
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    conn = await Conn.open(served.port)
    await conn.send(raw)
    answer = await conn.answer()
    await accepted_ids(served, [answer])
    assert served.takers() == (0, 1)
    await conn.close()


async def test_a_gzip_body_is_stored_decoded_as_aiohttp_decodes_it(served: Served) -> None:
    body = event_body()
    conn = await Conn.open(served.port)
    await conn.send(ingest_request(gzip.compress(body), b"Content-Encoding: gzip"))
    answer = await conn.answer()
    await accepted_ids(served, [answer])
    assert await stored_body(served, json.loads(answer[2])["event_id"]) == body
    await conn.close()


async def test_a_body_that_arrives_later_is_accepted(served: Served) -> None:
    body = event_body()
    raw = ingest_request(body)
    conn = await Conn.open(served.port)
    await conn.send(raw[: -len(body) // 2])
    await asyncio.sleep(0.2)
    await conn.send(raw[-len(body) // 2 :])
    answer = await conn.answer()
    await accepted_ids(served, [answer])
    await conn.close()


async def test_a_head_split_anywhere_is_accepted(served: Served) -> None:
    for cut in (1, 5, 16, 40):
        raw = ingest_request(event_body())
        conn = await Conn.open(served.port)
        await conn.send(raw[:cut])
        await asyncio.sleep(0.05)
        await conn.send(raw[cut:])
        await accepted_ids(served, [await conn.answer()])
        await conn.close()


async def test_a_body_that_never_arrives_is_a_408(served: Served) -> None:
    raw = ingest_request(event_body())
    conn = await Conn.open(served.port)
    await conn.send(raw[:-10])
    status, _, body = await conn.answer()  # client_timeout is 1 s here
    assert status == 408
    assert json.loads(body)["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"
    await conn.close()


async def test_refusals_are_answered_here_in_the_envelope(served: Served) -> None:
    cases = [
        (ingest_request(b"{not json"), 400),
        (ingest_request(b"[1]"), 400),
        (ingest_request(b'{"type": ""}'), 422),
        (ingest_request(event_body()).replace(b"application/json", b"text/plain"), 415),
        (ingest_request(event_body(), b"X-Router-Attempt: 1"), 410),
        (ingest_request(event_body(), b"webhook-id: " + b"w" * 600), 400),
        (ingest_request(event_body(), b"webhook-id: caf\xc3\xa9"), 400),
    ]
    conn = await Conn.open(served.port)
    for raw, status in cases:
        await conn.send(raw)
        got, headers, body = await conn.answer()
        assert got == status, body
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["errors"][0]["extensions"]["code"]
    assert served.takers() == (1, 0)
    await conn.close()


async def test_connection_close_is_honoured(served: Served) -> None:
    conn = await Conn.open(served.port)
    await conn.send(ingest_request(event_body(), b"Connection: close"))
    status, headers, _ = await conn.answer()
    assert status == 202 and headers["connection"] == "close"
    assert await conn.closed()


async def test_a_store_failure_is_answered_429_not_lost(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.http.context import LEDGER

    async def unavailable(*args: object) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(served.runner.app[LEDGER], "accept", unavailable)
    conn = await Conn.open(served.port)
    await conn.send(ingest_request(event_body()))
    status, headers, _ = await conn.answer()
    assert status == 429 and headers["retry-after"]
    await conn.close()


async def test_an_unexpected_error_is_a_500_logged_once(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from router.http.context import LEDGER

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.runner.app[LEDGER], "accept", broken)
    conn = await Conn.open(served.port)
    with caplog.at_level(logging.ERROR):
        await conn.send(ingest_request(event_body()))
        status, _, body = await conn.answer()
    assert status == 500
    assert json.loads(body)["errors"][0]["extensions"]["code"] == "INTERNAL"
    assert [r.getMessage() for r in caplog.records] == ["unhandled error on POST /webhooks"]
    # The connection stays usable.
    monkeypatch.undo()
    await conn.send(ingest_request(event_body()))
    assert (await conn.answer())[0] == 202
    await conn.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    redis: Redis, key_prefix: str
) -> None:
    app = create_app(make_settings(key_prefix), redis=redis)
    runner = RouterRunner(app, access_log=None, handle_signals=False, keepalive_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        conn = await Conn.open(runner.addresses[0][1])
        await conn.send(ingest_request(event_body()))
        assert (await conn.answer())[0] == 202
        assert await conn.closed()
    finally:
        await runner.cleanup()


async def test_shutdown_answers_the_request_in_progress_then_closes(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.http.context import LEDGER

    idle = await Conn.open(served.port)
    await idle.send(ingest_request(event_body()))
    await idle.answer()
    ledger = served.runner.app[LEDGER]
    accept = ledger.accept
    started = asyncio.Event()

    stored: list[str] = []

    async def slow(*args: Any) -> Any:
        started.set()
        await asyncio.sleep(0.3)
        status, event_id = await accept(*args)
        stored.append(event_id)
        return status, event_id

    monkeypatch.setattr(ledger, "accept", slow)
    busy = await Conn.open(served.port)
    await busy.send(ingest_request(event_body()))
    await started.wait()
    cleanup = asyncio.create_task(served.runner.cleanup())
    status, headers, body = await busy.answer()
    assert status == 202 and headers["connection"] == "close"
    assert await busy.closed() and await idle.closed()
    await cleanup
    assert stored == [json.loads(body)["event_id"]]


async def test_a_client_that_leaves_mid_answer_costs_nothing_but_its_connection(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from router.http.context import LEDGER

    ledger = served.runner.app[LEDGER]
    accept = ledger.accept
    done = asyncio.Event()

    async def slow(*args: Any) -> Any:
        await asyncio.sleep(0.2)
        try:
            return await accept(*args)
        finally:
            done.set()

    monkeypatch.setattr(ledger, "accept", slow)
    conn = await Conn.open(served.port)
    with caplog.at_level(logging.WARNING):
        await conn.send(ingest_request(event_body()))
        await conn.close()
        await done.wait()
        await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert served.takers() == (0, 0)


def test_parse_takes_only_a_whole_plain_request() -> None:
    body = event_body()
    raw = ingest_request(body)
    message = parse(raw + HEALTH, MAX_BODY)
    assert message is not None
    assert message.body == body and message.length == len(raw) and message.keep_alive
    assert message.headers["content-type"] == "application/json"
    assert parse(raw[:-1], MAX_BODY) is None  # not whole yet
    assert parse(raw, len(body) - 1) is None  # over the limit
    assert parse(raw.replace(b"POST", b"post"), MAX_BODY) is None
    assert parse(ingest_request(body, b"Connection: close"), MAX_BODY).keep_alive is False
    # A head that ends before the blank line found (a bare LF) is not taken.
    sneaky = raw.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\n\n")
    assert parse(sneaky, MAX_BODY) is None
