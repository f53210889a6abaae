"""The delivery client (`router.pipeline.client`) against receivers that answer in every way
HTTP/1.1 allows, and some it does not: what it sends, what it makes of each answer, and when
it keeps a connection for the next delivery."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.pipeline import client as client_module
from router.pipeline.client import MAX_HEAD_BYTES, RESPONSE_BODY_LIMIT, DeliveryClient

BODY = b'{"type":"ContactCreate","id":"c1"}'
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1"}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A receiver speaking raw bytes: `answer(request_head, reader, writer)` per request, on
    connections it counts."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_receiver(answer: Handler) -> AsyncIterator[tuple[Raw, str]]:
    raw = Raw(answer)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}/hooks/in?x=1"
    finally:
        server.close()


def replying(data: bytes, *, close: bool = False) -> Handler:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return answer


@pytest.fixture
async def client() -> AsyncIterator[DeliveryClient]:
    made = DeliveryClient(allow_private=True, timeout=2.0)
    yield made
    await made.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_request_carries_the_path_host_headers_and_exact_body(
    client: DeliveryClient,
) -> None:
    async with raw_receiver(replying(OK)) as (raw, url):
        result = await client.post(url, BODY, dict(HEADERS))
    assert (result.status_code, result.error, result.response_body) == (200, None, "ok")
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    port = url.split(":")[2].split("/")[0]
    assert lines[0] == b"POST /hooks/in?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in lines
    assert b"webhook-id: msg_1" in lines and b"Accept-Encoding: identity" in lines
    assert f"Content-Length: {len(BODY)}".encode() in lines
    assert body == BODY


async def test_kept_alive_connections_are_reused(client: DeliveryClient) -> None:
    async with raw_receiver(replying(OK)) as (raw, url):
        results = [await client.post(url, BODY, dict(HEADERS)) for _ in range(5)]
    assert [r.status_code for r in results] == [200] * 5
    assert raw.connections == 1 and len(raw.requests) == 5


async def test_connection_close_and_answers_read_to_the_end_of_the_connection(
    client: DeliveryClient,
) -> None:
    closing = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 4\r\n\r\ndone"
    async with raw_receiver(replying(closing, close=True)) as (raw, url):
        first = await client.post(url, BODY, dict(HEADERS))
        second = await client.post(url, BODY, dict(HEADERS))
    assert (first.status_code, first.response_body) == (202, "done")
    assert second.status_code == 202 and raw.connections == 2
    to_the_end = b"HTTP/1.0 200 OK\r\n\r\nuntil the connection closes"
    async with raw_receiver(replying(to_the_end, close=True)) as (raw, url):
        result = await client.post(url, BODY, dict(HEADERS))
    assert (result.status_code, result.error) == (200, None)
    assert result.response_body == "until the connection closes"


async def test_chunked_answers_and_informational_answers_before_the_real_one(
    client: DeliveryClient,
) -> None:
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with raw_receiver(replying(chunked)) as (raw, url):
        first = await client.post(url, BODY, dict(HEADERS))
        second = await client.post(url, BODY, dict(HEADERS))
    assert (first.status_code, first.response_body) == (500, "hello world")
    assert second.status_code == 500 and raw.connections == 1


async def test_a_long_answer_is_cut_at_the_limit_and_its_connection_dropped(
    client: DeliveryClient,
) -> None:
    size = RESPONSE_BODY_LIMIT * 50
    long = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"y" * size
    async with raw_receiver(replying(long)) as (raw, url):
        first = await client.post(url, BODY, dict(HEADERS))
        second = await client.post(url, BODY, dict(HEADERS))
    assert first.status_code == 200 and first.response_body == "y" * RESPONSE_BODY_LIMIT
    assert second.status_code == 200 and raw.connections == 2  # not drained and reused


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"", "closed the connection"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Flood: " + b"a" * MAX_HEAD_BYTES, "headers too large"),
        (b"SMTP ready\r\n\r\n", "invalid HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", "invalid HTTP response"),
    ],
    ids=["closed unanswered", "header flood", "not HTTP", "bad content-length"],
)
async def test_broken_answers_are_failed_attempts_with_a_reason(
    client: DeliveryClient, answer: bytes, expected: str
) -> None:
    async with raw_receiver(replying(answer, close=True)) as (_, url):
        result = await client.post(url, BODY, dict(HEADERS))
    assert result.status_code is None and result.error is not None
    assert expected in result.error
    async with raw_receiver(replying(OK)) as (_, url):  # the client is still usable
        assert (await client.post(url, BODY, dict(HEADERS))).status_code == 200


async def test_a_receiver_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    client = DeliveryClient(allow_private=True, timeout=0.3)
    try:
        async with raw_receiver(silent) as (_, url):
            result = await client.post(url, BODY, dict(HEADERS))
    finally:
        await client.close()
    assert result.status_code is None and result.error == "timed out after 0.3s"
    assert 250 <= result.duration_ms < 2000


async def test_retry_after_is_read_from_429_and_503(client: DeliveryClient) -> None:
    limited = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    async with raw_receiver(replying(limited)) as (_, url):
        result = await client.post(url, BODY, dict(HEADERS))
    assert (result.status_code, result.retry_after) == (429, 7.0)


async def test_redirects_are_answers_not_followed(client: DeliveryClient) -> None:
    moved = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n"
    async with raw_receiver(replying(moved + b"Content-Length: 0\r\n\r\n")) as (raw, url):
        result = await client.post(url, BODY, dict(HEADERS))
    assert (result.status_code, result.error) == (307, "redirects are not followed")
    assert len(raw.requests) == 1


@pytest.mark.parametrize("header", [("X-Router-Event", "a\r\nX-Evil: 1"), ("X-Bad\nName", "v")])
async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(
    client: DeliveryClient, header: tuple[str, str]
) -> None:
    async with raw_receiver(replying(OK)) as (raw, url):
        result = await client.post(url, BODY, dict(HEADERS) | dict([header]))
    assert result.status_code is None and "line break" in (result.error or "")
    assert raw.requests == []


async def test_a_connection_the_receiver_closed_while_idle_is_not_reused(
    client: DeliveryClient,
) -> None:
    async with raw_receiver(replying(OK, close=True)) as (raw, url):
        # HTTP/1.1 without Connection: close says keep-alive, but the receiver hangs up anyway.
        first = await client.post(url, BODY, dict(HEADERS))
        await asyncio.sleep(0.1)  # the close arrives while the connection is idle
        second = await client.post(url, BODY, dict(HEADERS))
    assert (first.status_code, second.status_code) == (200, 200)
    assert raw.connections == 2


async def test_internal_targets_are_refused_unless_allowed() -> None:
    guarded = DeliveryClient(allow_private=False, timeout=2.0)
    try:
        async with raw_receiver(replying(OK)) as (raw, url):
            literal = await guarded.post(url, BODY, dict(HEADERS))
            by_name = await guarded.post(url.replace("127.0.0.1", "localhost"), BODY, dict(HEADERS))
    finally:
        await guarded.close()
    assert literal.error is not None and literal.error.startswith("refused target")
    assert by_name.error is not None and "refused target" in by_name.error
    assert raw.requests == []


async def test_a_port_nothing_listens_on_is_a_connection_error(client: DeliveryClient) -> None:
    async with raw_receiver(replying(OK)) as (_, url):
        pass  # closed again: nothing listens there now
    result = await client.post(url, BODY, dict(HEADERS))
    assert result.status_code is None and "cannot connect to 127.0.0.1" in (result.error or "")


async def test_an_aiohttp_receiver_sees_the_same_delivery_as_from_aiohttp(
    client: DeliveryClient, aiohttp_server: Callable[..., Awaitable[web.Application]]
) -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers["webhook-id"], await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/in", hook)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/in?a=b"  # type: ignore[attr-defined]
    results = await asyncio.gather(*(client.post(url, BODY, dict(HEADERS)) for _ in range(20)))
    assert {(r.status_code, r.response_body) for r in results} == {(200, '{"ok": true}')}
    assert seen == [("/in?a=b", "msg_1", BODY)] * 20


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_receivers_are_verified(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    raw = Raw(replying(OK))
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/in"
    trusting = ssl.create_default_context(cafile=str(cert_file))
    default = DeliveryClient(allow_private=True, timeout=2.0)
    verified = DeliveryClient(allow_private=True, timeout=2.0, tls=trusting)
    try:
        untrusted = await default.post(url, BODY, dict(HEADERS))
        trusted = [await verified.post(url, BODY, dict(HEADERS)) for _ in range(3)]
    finally:
        await default.close()
        await verified.close()
        server.close()
    assert untrusted.status_code is None and "certificate verify failed" in (untrusted.error or "")
    assert [r.status_code for r in trusted] == [200] * 3 and raw.connections == 1
    head = raw.requests[-1].split(b"\r\n")
    assert head[0] == b"POST /in HTTP/1.1"


async def test_idle_connections_are_closed_after_a_while(
    client: DeliveryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with raw_receiver(replying(OK)) as (raw, url), raw_receiver(replying(OK)) as (_, other):
        await asyncio.gather(*(client.post(url, BODY, dict(HEADERS)) for _ in range(3)))
        assert raw.connections == 3
        monkeypatch.setattr(client_module, "IDLE_SECONDS", 0.05)
        await asyncio.sleep(0.1)
        # A delivery to another receiver sweeps the first one's idle connections too.
        await client.post(other, BODY, dict(HEADERS))
        assert sum(len(q) for q in client._idle.values()) == 1
        await client.post(url, BODY, dict(HEADERS))
    assert raw.connections == 4


async def test_the_timeout_covers_connecting_too() -> None:
    # A TLS handshake the receiver never answers: the time goes on connecting, not waiting.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/in"
    client = DeliveryClient(allow_private=True, timeout=0.3)
    try:
        result = await client.post(url, BODY, dict(HEADERS))
    finally:
        await client.close()
        server.close()
    assert result.status_code is None and result.error == "timed out after 0.3s"
    assert 250 <= result.duration_ms < 2000


async def test_a_name_is_resolved_and_each_address_tried(client: DeliveryClient) -> None:
    # localhost may resolve to ::1 first; the receiver listens on 127.0.0.1 only.
    async with raw_receiver(replying(OK)) as (raw, url):
        result = await client.post(url.replace("127.0.0.1", "localhost"), BODY, dict(HEADERS))
    assert (result.status_code, result.error) == (200, None)
    port = url.split(":")[2].split("/")[0]
    assert f"Host: localhost:{port}".encode() in raw.requests[0].split(b"\r\n")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
async def test_an_ipv6_literal_is_connected_to_and_named_in_brackets(
    client: DeliveryClient,
) -> None:
    raw = Raw(replying(OK))
    try:
        server = await asyncio.start_server(raw.serve, "::1", 0)
    except OSError:
        pytest.skip("::1 cannot be bound here")
    port = server.sockets[0].getsockname()[1]
    try:
        result = await client.post(f"http://[::1]:{port}/in", BODY, dict(HEADERS))
    finally:
        server.close()
    assert (result.status_code, result.error) == (200, None)
    assert f"Host: [::1]:{port}".encode() in raw.requests[0].split(b"\r\n")
