"""Hostile input: whatever arrives at ingest or in an id or a name, the answer is a 4xx in the
error envelope (or 202 for a real event), never a 5xx and never a hang; attacker text is
stored verbatim (or, for control characters in a name, refused), returned JSON-escaped, and
never reflected into a response header.

The catalog parser's property tests live in tests/test_catalog_parser.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy

from router.http.context import SETTINGS

ANSWER_WITHIN = 10.0  # seconds: a request that takes longer counts as a hang

HOSTILE = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# JSON values, including the awkward ones: big and non-finite-looking numbers, control
# characters and surrogate escapes inside strings.
# JSON's own values: no NaN/Infinity (not JSON), no lone surrogates (not Unicode text).
json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


async def post_raw(
    client: TestClient, body: bytes, content_type: str | None = "application/json"
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    """POST `body` to /webhooks; fails the test if no answer comes within ANSWER_WITHIN."""
    headers = {} if content_type is None else {"Content-Type": content_type}

    async def send() -> tuple[int, bytes, CIMultiDictProxy[str]]:
        async with client.post("/webhooks", data=body, headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers

    return await asyncio.wait_for(send(), ANSWER_WITHIN)


def is_event(body: bytes) -> bool:
    """True if `body` is strict JSON (UTF-8, no NaN/Infinity) for an object with a string
    `type` the router can route by: what ingest must accept."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    kind = payload.get("type")
    return isinstance(kind, str) and kind != "" and _encodable(kind)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_error_envelope(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    errors = json.loads(body)["errors"]
    assert errors, body
    for item in errors:
        assert isinstance(item["message"], str)
        assert isinstance(item["extensions"]["code"], str)


def assert_answer_fits(request_body: bytes, status: int, body: bytes) -> None:
    if is_event(request_body):
        assert status == 202, (status, body[:300])
        assert json.loads(body)["status"] in ("accepted", "duplicate", "unroutable")
    else:
        assert_error_envelope(status, body)


# ---------------------------------------------------------------- ingest properties


@HOSTILE
@given(body=st.binary(max_size=2048))
async def test_arbitrary_bytes_are_refused_in_the_envelope(client: TestClient, body: bytes) -> None:
    status, answer, _ = await post_raw(client, body)
    assert_answer_fits(body, status, answer)


@HOSTILE
@given(value=json_values)
async def test_any_json_value_is_a_4xx_unless_it_is_an_object_with_a_type(
    client: TestClient, value: Any
) -> None:
    body = json.dumps(value).encode()
    status, answer, _ = await post_raw(client, body)
    assert_answer_fits(body, status, answer)


@HOSTILE
@given(fields=st.dictionaries(st.text(max_size=12), json_values, max_size=6))
async def test_event_with_arbitrary_extra_fields_is_accepted(
    client: TestClient, fields: dict[str, Any]
) -> None:
    body = json.dumps({**fields, "type": "ContactCreate"}).encode()
    status, answer, _ = await post_raw(client, body)
    assert status == 202, answer


@HOSTILE
@given(
    field=st.sampled_from(["locationId", "companyId", "webhookId", "type"]),
    value=st.text(min_size=1, max_size=40).filter(_encodable),
)
async def test_any_unicode_in_a_routing_field_is_accepted_or_refused_cleanly(
    client: TestClient, field: str, value: str
) -> None:
    body = json.dumps({"type": "ContactCreate", field: value}).encode()
    status, answer, _ = await post_raw(client, body)
    assert_answer_fits(body, status, answer)


@HOSTILE
@given(
    content_type=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/xml",
                "application/jsonx",
                "json",
                "",
                "*/*",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1).filter(
            lambda t: not t.lower().split(";")[0].strip().endswith("json")
        ),
    )
)
async def test_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    status, answer, _ = await post_raw(client, b'{"type": "ContactCreate"}', content_type)
    assert_error_envelope(status, answer)
    assert status == 415


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000, id="100k-open-brackets"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100k-deep-array"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="50k-deep-object"),
        pytest.param(b'{"type": "ContactCreate"', id="truncated"),
        pytest.param(b"\xff\xfe{\x00}\x00", id="utf16-bom"),
        pytest.param(b'{"type": "ContactCreate", "x": "\xc3\x28"}', id="invalid-utf8"),
        pytest.param(b'{"type": "ContactCreate", "x": ' + b"9" * 100_000 + b"}", id="1e5-digits"),
        pytest.param(b"1e999999", id="huge-number-alone"),
        pytest.param(b'"ContactCreate"', id="string"),
        pytest.param(b"\x00" * 1024, id="nul-bytes"),
    ],
)
async def test_malformed_body_is_a_4xx_in_the_envelope(client: TestClient, body: bytes) -> None:
    status, answer, _ = await post_raw(client, body)
    assert_error_envelope(status, answer)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"type": "ContactCreate", "x": 1e-999999}', id="underflow"),
        pytest.param(b'{"type": "ContactCreate", "companyId": "a\\u0000b"}', id="nul-escape"),
    ],
)
async def test_strange_but_valid_json_event_is_accepted(client: TestClient, body: bytes) -> None:
    status, answer, _ = await post_raw(client, body)
    assert status == 202, answer


@pytest.mark.parametrize("field", ["type", "locationId", "companyId", "webhookId"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud83d"])
async def test_lone_surrogate_in_a_routing_field_is_a_4xx(
    client: TestClient, field: str, escape: str
) -> None:
    body = f'{{"type": "ContactCreate", "{field}": "{escape}"}}'.encode()
    status, answer, _ = await post_raw(client, body)
    assert_error_envelope(status, answer)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"type": "\xed\xa0\x80"}', id="in-type"),
        pytest.param(b'{"type": "ContactCreate", "x": "\xed\xa0\x80"}', id="in-payload"),
        pytest.param(b'{"type": "ContactCreate", "x": "\xed\xbf\xbf"}', id="low-surrogate"),
    ],
)
async def test_body_that_is_not_valid_utf8_is_400(client: TestClient, body: bytes) -> None:
    status, answer, _ = await post_raw(client, body)
    assert_error_envelope(status, answer)
    assert status == 400


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_json_number_tokens_are_400(client: TestClient, token: str) -> None:
    status, answer, _ = await post_raw(
        client, b'{"type": "ContactCreate", "x": %s}' % token.encode()
    )
    assert_error_envelope(status, answer)
    assert status == 400


async def test_oversized_body_is_413_in_the_envelope(client: TestClient) -> None:
    limit = client.app[SETTINGS].max_body_bytes
    body = b'{"type": "ContactCreate", "pad": "' + b"x" * limit + b'"}'
    status, answer, _ = await post_raw(client, body)
    assert_error_envelope(status, answer)
    assert status == 413


# ---------------------------------------------------------------- ids and names

ATTACKER_MARK = "injected"


def assert_no_header_carries(headers: CIMultiDictProxy[str], needle: str) -> None:
    for name, value in headers.items():
        assert needle.lower() not in name.lower(), (name, value)
        assert needle.lower() not in value.lower(), (name, value)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/subscribers/..%2f..%2fetc%2fpasswd",
        "/v1/subscribers/..%2F..%2F..%2Fv1%2Fapi-keys",
        "/v1/subscribers/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/subscribers/....//....//etc/passwd",
        "/v1/subscribers/%00",
        "/v1/subscribers/sub_%00injected",
        "/v1/subscribers/sub_%0d%0aX-injected:%201",
        "/v1/subscribers/sub_%0d%0a%0d%0a<html>injected",
        "/v1/deliveries/dlv_%0d%0aSet-Cookie:%20injected=1",
        "/v1/events/evt_%0d%0aLocation:%20http://injected.example",
        "/v1/api-keys/key_%0d%0aX-injected:%201",
        "/v1/subscribers/%E2%80%AEinjected",
        "/v1/subscribers/%ff%fe-injected",
    ],
)
async def test_hostile_id_in_the_path_is_a_4xx_without_reflection_in_headers(
    client: TestClient, admin_headers: dict[str, str], path: str
) -> None:
    async def send() -> tuple[int, bytes, CIMultiDictProxy[str]]:
        async with client.get(path, headers=admin_headers) as resp:
            return resp.status, await resp.read(), resp.headers

    status, body, headers = await asyncio.wait_for(send(), ANSWER_WITHIN)
    assert_error_envelope(status, body)
    assert_no_header_carries(headers, ATTACKER_MARK)
    assert_no_header_carries(headers, "passwd")


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_ten_kilobyte_id_is_a_4xx(
    client: TestClient, admin_headers: dict[str, str], method: str
) -> None:
    # Over aiohttp's 8190-byte request line: the HTTP layer refuses it before routing, in
    # plain text (so no envelope), but never with a 5xx.
    path = "/v1/subscribers/sub_" + "a" * 10_240

    async def send() -> tuple[int, CIMultiDictProxy[str]]:
        async with client.request(method, path, headers=admin_headers, json={}) as resp:
            await resp.read()
            return resp.status, resp.headers

    status, headers = await asyncio.wait_for(send(), ANSWER_WITHIN)
    assert 400 <= status < 500
    assert_no_header_carries(headers, "a" * 64)


async def test_seven_kilobyte_id_is_404_in_the_envelope(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    async with client.get("/v1/subscribers/sub_" + "a" * 7_000, headers=admin_headers) as resp:
        status, body = resp.status, await resp.read()
    assert_error_envelope(status, body)
    assert status == 404


HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>injected",
    '"; DROP TABLE subscribers; -- injected',
    "injected \u0645\u0631\u062d\u0628\u0627 \U0001f600",
    "{{7*7}} ${injected} %s%n",
]
# Control, line-separator and bidi characters: refused (tests/test_trust_operator.py).
CONTROL_NAMES = [
    "evil\r\nSet-Cookie: injected=1",
    "evil\r\n\r\n<html><script>alert('injected')</script>",
    "injected\u0000nul",
    "injected\u2028line\u2029separators",
    "injected \u202e\u0645\u0631\u062d\u0628\u0627 \U0001f600",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_subscriber_name_is_stored_verbatim_and_returned_json_escaped(
    client: TestClient, admin_headers: dict[str, str], name: str
) -> None:
    created = await client.post(
        "/v1/subscribers",
        json={"name": name, "url": "https://example.com/hook", "scopes": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert created.status == 201, await created.text()
    assert_no_header_carries(created.headers, ATTACKER_MARK)
    sub_id = (await created.json())["id"]

    resp = await client.get(f"/v1/subscribers/{sub_id}", headers=admin_headers)
    raw = await resp.read()
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert json.loads(raw)["name"] == name
    # JSON-escaped: no raw control character (CR, LF, NUL) reaches the wire.
    assert not any(byte in raw for byte in (b"\r", b"\n", b"\x00"))
    assert_no_header_carries(resp.headers, ATTACKER_MARK)

    listed = await client.get("/v1/subscribers", headers=admin_headers)
    assert name in [item["name"] for item in (await listed.json())["items"]]


@pytest.mark.parametrize("name", CONTROL_NAMES)
async def test_subscriber_name_with_control_characters_is_422_without_reflection(
    client: TestClient, admin_headers: dict[str, str], name: str
) -> None:
    resp = await client.post(
        "/v1/subscribers",
        json={"name": name, "url": "https://example.com/hook", "scopes": ["contacts.readonly"]},
        headers=admin_headers,
    )
    raw = await resp.read()
    assert_error_envelope(resp.status, raw)
    assert [e["extensions"]["field"] for e in json.loads(raw)["errors"]] == ["name"]
    assert not any(byte in raw for byte in (b"\r", b"\n", b"\x00"))
    assert_no_header_carries(resp.headers, ATTACKER_MARK)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook\r\nX-Injected: 1",
        "https://example.com/hook\nHost: injected.example",
        "https://exa\r\nmple.com/hook",
        "https://example.com/\u0000injected",
        "javascript:alert('injected')",
        "file:///etc/passwd",
        "gopher://example.com:70/_injected",
        "https://user:pass@example.com/injected",
    ],
)
async def test_hostile_subscriber_url_is_refused(
    client: TestClient, admin_headers: dict[str, str], url: str
) -> None:
    resp = await client.post(
        "/v1/subscribers",
        json={"name": "hostile", "url": url, "scopes": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 422, await resp.text()
    assert_no_header_carries(resp.headers, ATTACKER_MARK)
