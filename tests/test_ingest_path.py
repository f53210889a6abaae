"""`serve` parses `POST /webhooks` below aiohttp's web server (`router.http.fast_ingest`):
every answer must be the one the app's own way gives.

Each request is sent to the same app served both ways, on the same store: through
`RouterRunner` (as `serve` and the rest of the suite serve it) and through aiohttp's plain
`AppRunner`. Only ids and times may differ."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from router.http.app import create_app
from tests.conftest import ServedTestServer, make_settings
from tests.payloads import encode, platform_event

JSON = {"Content-Type": "application/json"}


def _event(**changes: Any) -> bytes:
    return encode(platform_event("ContactCreate", webhookId=str(uuid.uuid4()), **changes))


# (method, path, headers, body): ingest's answers across its classes: accepted, duplicate,
# unroutable, refused for its body, its headers, its media type, its size; and requests the
# short path must leave to the app (other methods, a query, a trailing slash, Expect).
REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", "/webhooks", JSON, b"accepted"),
    ("POST", "/webhooks", JSON, b"duplicate"),
    ("POST", "/webhooks", JSON, encode({"type": "ContactUpdate", "id": "c1"})),
    ("POST", "/webhooks", JSON, b"{not json"),
    ("POST", "/webhooks", JSON, b"[1, 2]"),
    ("POST", "/webhooks", JSON, encode({"type": ""})),
    ("POST", "/webhooks", JSON, encode({"type": "router.breaker.opened"})),
    ("POST", "/webhooks", {"Content-Type": "text/plain"}, b"accepted"),
    ("POST", "/webhooks", {**JSON, "X-Router-Attempt": "1"}, b"accepted"),
    ("POST", "/webhooks", {**JSON, "webhook-id": "w" * 600}, b"accepted"),
    ("POST", "/webhooks", JSON, b"[" * 200 + b"]" * 200),
    ("POST", "/webhooks", JSON, b" " * 2_000_000),
    ("POST", "/webhooks?x=1", JSON, b"accepted"),
    ("POST", "/webhooks/", JSON, b"accepted"),
    ("POST", "/Webhooks", JSON, b"accepted"),
    ("POST", "/webhooks", {**JSON, "Expect": "100-continue"}, b"accepted"),
    ("POST", "/webhooks", {**JSON, "Expect": "something-else"}, b"accepted"),
    ("GET", "/webhooks", {}, None),
    ("PUT", "/webhooks", JSON, b"accepted"),
    ("POST", "/webhooks/ContactCreate", JSON, b"accepted"),
]


def _comparable(status: int, body: Any) -> tuple[int, Any]:
    """The answer without what differs between two sends (ids)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "event_id"}
    return status, body


async def _send(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: Any
) -> tuple[int, Any]:
    resp = await client.request(method, path, headers=headers, data=body)
    text = await resp.text()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return _comparable(resp.status, parsed)


@pytest.mark.parametrize(
    "index", range(len(REQUESTS)), ids=lambda i: f"{REQUESTS[i][0]} {REQUESTS[i][1]} #{i}"
)
async def test_serve_answers_ingest_as_the_app_does(
    redis: Redis, key_prefix: str, index: int
) -> None:
    method, path, headers, body = REQUESTS[index]
    settings = make_settings(key_prefix, max_body_bytes=1_000_000)
    app = create_app(settings, redis=redis)
    answers = []
    for server in (ServedTestServer(app), TestServer(app)):
        async with TestClient(server) as client:
            if body == b"duplicate":
                sent = _event()
                await _send(client, method, path, headers, sent)
                answers.append(await _send(client, method, path, headers, sent))
            else:
                sent = _event() if body == b"accepted" else body
                answers.append(await _send(client, method, path, headers, sent))
    served, plain = answers
    assert served == plain
    if index == 0:
        assert served[0] == 202 and served[1]["status"] == "accepted"


def test_an_app_without_ingest_is_served_the_app_s_way() -> None:
    from router.http.fast_ingest import ingest_route_declared

    assert ingest_route_declared(web.Application()) is False


def test_an_ingest_route_needing_credentials_is_refused() -> None:
    from router.http.fast_ingest import ingest_route_declared
    from router.http.operations import Resource

    guarded = Resource("guarded")

    @guarded.post("/webhooks", summary="needs a key", scope="events:read")
    async def ingest(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    guarded.add_routes(app)
    with pytest.raises(RuntimeError, match="scope=None"):
        ingest_route_declared(app)
