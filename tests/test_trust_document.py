"""The document a live router serves promises only what that router accepts (issue 13, class 8,
found by running schemathesis' positive-data check against `webhook-router serve` with its
default settings).

With private targets refused (the default), the document offered every dotted-quad and IPv6
literal as a subscriber host, and the server refused the internal ones (`250.250.250.250`,
`10.0.0.1`): no pattern a client can check tells internal addresses from public ones in every
Python version the router runs on. Such a router now takes a receiver by DNS name only (not
`localhost` or a name under it), and documents exactly that; a router that allows private
targets documents and takes address literals as before. The replay body offered `pending`,
which the server always refused. A host longer than DNS allows (253) matched the pattern and
could never be delivered to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from yarl import URL

from router.core.targets import (
    PUBLIC_URL_PATTERN,
    URL_PATTERN,
    host_address,
    public_url_refusal,
    url_shape_refusal,
)
from router.http.app import create_app
from tests.conftest import ADMIN_TOKEN, make_settings

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_STRICT = re.compile(PUBLIC_URL_PATTERN)
# Hypothesis meets the pattern's lookaheads by filtering, hence the health check left out.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Refused when private targets are: the address is internal, or any literal at all.
ADDRESS_LITERALS = [
    "http://250.250.250.250/hook",
    "http://10.0.0.1/hook",
    "http://100.64.0.1/hook",
    "http://192.0.2.1/hook",
    "http://1.1.1.1/hook",
    "http://93.184.216.34:8443/hook",
    "http://[2606:4700::1111]/hook",
    "http://[2001:db8::1]/hook",
    "http://[fe80::1]/hook",
]
LOCALHOST_NAMES = [
    "http://localhost/hook",
    "http://LocalHost:9/hook",
    "http://app.localhost/hook",
    "https://a.b.LOCALHOST:8443/x?y",
]
TOO_LONG_HOST = "http://" + ".".join(["a" * 63] * 4) + "/hook"  # 255 characters
# Names a router that refuses private targets still takes (they resolve to nothing here;
# delivery checks the addresses they resolve to when it connects).
NAMES = [
    "https://receiver.example/hook",
    "http://localhost-app.example/hook",
    "http://mylocalhost/hook",
    "http://localhost.example.com/hook",
    "http://1e2.example/hook",
    "http://" + ".".join(["a" * 63] * 3 + ["a" * 61]) + "/hook",  # 253 characters
]


def body(url: str) -> dict[str, Any]:
    return {"name": "app", "url": url, "scopes": ["contacts.readonly"]}


async def document_of(client: TestClient) -> dict[str, Any]:
    return await (await client.get("/openapi.json")).json()


@pytest.fixture
async def strict_client(aiohttp_client: Any, redis: Redis, key_prefix: str) -> TestClient:
    """An app with the default SSRF guard: private targets refused."""
    settings = make_settings(key_prefix, allow_private_targets=False)
    return await aiohttp_client(create_app(settings, redis=redis))


def _ecma_matches(pattern: str) -> Callable[[str], bool]:
    """`pattern` as a JSON Schema validator (ECMA-262 regex), the way clients read it."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid


# ---------------------------------------------------------------- the URL rule per router


async def test_each_router_documents_the_url_rule_it_applies(
    strict_client: TestClient, client: TestClient
) -> None:
    strict, lenient = await document_of(strict_client), await document_of(client)
    for model in ("SubscriberCreate", "SubscriberPatch"):
        assert strict["components"]["schemas"][model]["properties"]["url"]["pattern"] == (
            PUBLIC_URL_PATTERN
        )
        assert lenient["components"]["schemas"][model]["properties"]["url"]["pattern"] == (
            URL_PATTERN
        )
    assert "x-subscriber-url" not in json.dumps(strict)


@pytest.mark.parametrize("url", ADDRESS_LITERALS + LOCALHOST_NAMES + [TOO_LONG_HOST])
async def test_what_the_strict_document_refuses_the_strict_router_refuses(
    strict_client: TestClient, url: str
) -> None:
    assert not _ecma_matches(PUBLIC_URL_PATTERN)(url)
    resp = await strict_client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert resp.status == 422, await resp.text()
    fields = [item["extensions"]["field"] for item in (await resp.json())["errors"]]
    assert fields == ["url"]


@pytest.mark.parametrize("url", NAMES)
async def test_what_the_strict_document_allows_the_strict_router_takes(
    strict_client: TestClient, url: str
) -> None:
    assert _ecma_matches(PUBLIC_URL_PATTERN)(url)
    resp = await strict_client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("url", ["http://1.1.1.1/hook", "http://[2606:4700::1111]/hook"])
async def test_a_router_allowing_private_targets_still_takes_address_literals(
    client: TestClient, url: str
) -> None:
    assert _ecma_matches(URL_PATTERN)(url)
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert resp.status == 201, await resp.text()


async def test_a_host_longer_than_dns_allows_is_refused_by_every_router(
    client: TestClient,
) -> None:
    assert not _ecma_matches(URL_PATTERN)(TOO_LONG_HOST)
    assert url_shape_refusal(TOO_LONG_HOST) is not None
    resp = await client.post("/v1/subscribers", json=body(TOO_LONG_HOST), headers=HEADERS)
    assert resp.status == 422


async def test_patch_applies_the_strict_rule(strict_client: TestClient) -> None:
    created = await strict_client.post("/v1/subscribers", json=body(NAMES[0]), headers=HEADERS)
    sub_id = (await created.json())["id"]
    for url in ("http://1.1.1.1/hook", "http://api.localhost/hook"):
        resp = await strict_client.patch(
            f"/v1/subscribers/{sub_id}", json={"url": url}, headers=HEADERS
        )
        assert resp.status == 422, url


@PROPERTY
@given(st.from_regex(URL_PATTERN, fullmatch=True))
def test_a_strict_router_takes_a_url_of_the_rule_exactly_when_its_host_is_a_name(
    url: str,
) -> None:
    host = URL(url).raw_host or ""
    literal = host_address(host) is not None
    loopback_name = host == "localhost" or host.endswith(".localhost")
    assert (public_url_refusal(url) is None) is (not literal and not loopback_name)
    assert (_STRICT.fullmatch(url) is not None) is (public_url_refusal(url) is None)


# ---------------------------------------------------------------- replay


async def test_replay_documents_only_the_states_it_takes(client: TestClient) -> None:
    document = await document_of(client)
    schema = document["components"]["schemas"]["ReplayRequest"]["properties"]["status"]
    assert "pending" not in schema["enum"]
    created = await client.post(
        "/v1/subscribers", json=body("http://receiver.example/hook"), headers=HEADERS
    )
    sub_id = (await created.json())["id"]
    for status in schema["enum"]:
        resp = await client.post(
            f"/v1/subscribers/{sub_id}/replay", json={"status": status}, headers=HEADERS
        )
        assert resp.status == 202, status
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/replay", json={"status": "pending"}, headers=HEADERS
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["extensions"]["field"] == "status"
    # `since` is documented as a date-time string; a number is not one.
    for since in (0, 1764800000, 1.5):
        resp = await client.post(
            f"/v1/subscribers/{sub_id}/replay", json={"since": since}, headers=HEADERS
        )
        assert resp.status == 422, since
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/replay",
        json={"since": "2026-01-01T00:00:00Z"},
        headers=HEADERS,
    )
    assert resp.status == 202


# ---------------------------------------------------------------- an optional body


async def test_a_body_with_no_required_field_is_documented_as_optional(
    client: TestClient,
) -> None:
    document = await document_of(client)
    optional = {
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation and not operation["requestBody"]["required"]
    }
    assert optional == {
        ("patch", "/v1/subscribers/{subscriber_id}"),
        ("post", "/v1/subscribers/{subscriber_id}/grants"),
        ("post", "/v1/subscribers/{subscriber_id}/replay"),
    }
    created = await client.post(
        "/v1/subscribers", json=body("http://receiver.example/hook"), headers=HEADERS
    )
    sub_id = (await created.json())["id"]
    for method, path in sorted(optional):
        resp = await client.request(
            method, path.replace("{subscriber_id}", sub_id), headers=HEADERS
        )
        assert resp.status < 300, (method, path, await resp.text())
    for path in ("/v1/subscribers", "/v1/api-keys"):  # required fields: a body is required
        resp = await client.post(path, headers=HEADERS)
        assert resp.status == 422
