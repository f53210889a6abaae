"""Subscriber URLs facing a hostile internet (issue 13): one spelling per URL, decided at
registration as the HTTP client will read it, stored in that form, and never the router itself.

Each class of trick is tried with several members: Unicode that the client folds into an
address (NFKC, IDNA), numeric spellings the C library reads as IPv4, IPv6 forms of one
address, malformed URLs (credentials, ports, control characters, fragments), URLs pointing at
the router's own listen address or public URLs, and URLs stored before the rule existed,
which delivery must still judge by the address the client would connect to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from yarl import URL

from router.core.targets import URL_PATTERN, canonical_url, literal_host_refusal, url_shape_refusal
from router.http.app import create_app
from router.http.context import SUBSCRIBERS
from router.pipeline.targets import OwnAddress, url_refusal
from router.settings import SettingsError, load_settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import platform_event
from tests.receivers import Receiver

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SCOPES = ["contacts.readonly"]

# Unicode the client (yarl: NFKC, then IDNA) folds into a loopback host.
UNICODE_LOOPBACK = [
    "http://127.0.0.\U0001fbf1/hook",  # SEGMENTED DIGIT ONE
    "http://\uff11\uff12\uff17.0.0.1/hook",  # fullwidth digits
    "http://127\u30020\u30020\u30021/hook",  # ideographic full stops
    "http://127\uff0e0\uff0e0\uff0e1/hook",  # fullwidth full stops
    "http://\U0001d7cf\U0001d7d0\U0001d7d5.0.0.1/hook",  # mathematical bold digits
    "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/hook",  # circled letters
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/hook",  # fullwidth letters
]
OTHER_NON_ASCII = [
    "https://b\u00fccher.example/hook",  # an IDN not given as punycode
    "https://example.com/pfad/\u00fc",
    "https://example.com/hook?q=\u00e9",
]
# Spellings the C library's inet_aton (and so getaddrinfo) reads as an IPv4 address.
NUMERIC_SPELLINGS = [
    "http://0x7f.1/hook",
    "http://0177.0.0.1/hook",
    "http://2130706433/hook",
    "http://127.1/hook",
    "http://127.0.1/hook",
    "http://0x7f000001/hook",
    "http://017700000001/hook",
    "http://0/hook",
    "http://1.2.3.04/hook",  # public, but not the one spelling of 1.2.3.4
    "http://0x08.0x08.0x08.0x08/hook",
]
# IPv6 forms that are not the address's one spelling, and zone ids.
IPV6_SPELLINGS = [
    "http://[::ffff:127.0.0.1]/hook",
    "http://[0:0:0:0:0:ffff:7f00:1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[0:0:0:0:0:0:0:1]/hook",
    "http://[0000::1]/hook",
    "http://[2606:4700:4700:0:0:0:0:1111]/hook",
    "http://[fe80::1%25eth0]/hook",
    "http://[::1%25lo]/hook",
]
OTHER_ODD_HOSTS = [
    "http://localhost./hook",
    "https://example.com./hook",
    "https://exa_mple.com/hook",
    "https://-example.com/hook",
    "https://example..com/hook",
    "https://example.com\\@evil.example/hook",
]
MALFORMED = [
    "http://:@example.com/hook",
    "http://user@example.com/hook",
    "http://user:secret@example.com/hook",
    "http://exa mple.com/hook",
    "http://example.com /hook",
    "http://example.com:0/hook",
    "http://example.com:65536/hook",
    "http://example.com:99999/hook",
    "http://example.com:/hook",
    "http://example.com:08080/hook",
    "http://exa\tmple.com/hook",
    "http://example.com/ho\rok",
    "http://example.com/ho\nok",
    "http://example.com/hook?a=\x1b[31m",
    "http://example.com/\x00",
    "http://example.com/\x7f",
    "http:///hook",
    "http://:8080/hook",
    "http://example.com/hook#fragment",
    "http://example.com/hook#",
    "https://example.com/{template}",
    "https://example.com/100%",
    "ftp://example.com/hook",
    "//example.com/hook",
]
# Given -> stored: accepted spellings, kept in the client's normal form.
CANONICAL = [
    ("https://Example.COM/hook", "https://example.com/hook"),
    ("HTTPS://example.com/hook", "https://example.com/hook"),
    ("https://example.com:443/hook", "https://example.com/hook"),
    ("https://example.com/a/../hook", "https://example.com/hook"),
    ("https://example.com?x=1", "https://example.com/?x=1"),
    ("https://example.com/%7ehook", "https://example.com/~hook"),
    ("https://xn--bcher-kva.example/hook", "https://xn--bcher-kva.example/hook"),
    ("http://LOCALHOST:9/hook", "http://localhost:9/hook"),
    ("http://[::1]:9/hook", "http://[::1]:9/hook"),
    ("http://[2606:4700:4700::1111]/hook", "http://[2606:4700:4700::1111]/hook"),
    ("http://[2001:DB8::1]/hook", "http://[2001:db8::1]/hook"),
    ("http://93.184.216.34:8443/hook", "http://93.184.216.34:8443/hook"),
]


def body(url: str) -> dict[str, Any]:
    return {"name": "app", "url": url, "scopes": SCOPES}


async def refused_fields(resp: Any) -> list[str]:
    assert resp.status == 422, await resp.text()
    return [item["extensions"]["field"] for item in (await resp.json())["errors"]]


@pytest.fixture
async def strict_client(aiohttp_client: Any, redis: Redis, key_prefix: str) -> TestClient:
    """A client of an app with the SSRF guard on (private targets refused)."""
    settings = make_settings(key_prefix, allow_private_targets=False)
    return await aiohttp_client(create_app(settings, redis=redis))


# ---------------------------------------------------------------- A: one spelling per URL


@pytest.mark.parametrize("url", UNICODE_LOOPBACK)
def test_client_would_turn_these_unicode_hosts_into_loopback(url: str) -> None:
    # Why they are refused: what was checked would not be what is connected to.
    assert URL(url).raw_host in ("127.0.0.1", "localhost")


@pytest.mark.parametrize("url", UNICODE_LOOPBACK + OTHER_NON_ASCII)
async def test_non_ascii_url_is_refused_even_with_private_targets_allowed(
    client: TestClient, url: str
) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize("url", UNICODE_LOOPBACK)
async def test_unicode_loopback_is_refused_by_the_guard(
    strict_client: TestClient, url: str
) -> None:
    resp = await strict_client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize("url", NUMERIC_SPELLINGS)
async def test_numeric_ipv4_spelling_is_refused_naming_the_address(
    client: TestClient, url: str
) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]
    host = URL(url).raw_host or ""
    address = socket.inet_ntoa(socket.inet_aton(host))
    assert f"write {address}" in (await resp.json())["errors"][0]["message"]


@pytest.mark.parametrize("url", IPV6_SPELLINGS)
async def test_non_canonical_ipv6_spelling_or_zone_id_is_refused(
    client: TestClient, url: str
) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize("url", OTHER_ODD_HOSTS)
async def test_host_that_is_not_a_plain_dns_name_is_refused(client: TestClient, url: str) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize("url", MALFORMED)
async def test_malformed_url_is_refused_naming_url(client: TestClient, url: str) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize(("given", "stored"), CANONICAL)
async def test_accepted_url_is_stored_as_the_client_will_send_it(
    client: TestClient, given: str, stored: str
) -> None:
    created = await client.post("/v1/subscribers", json=body(given), headers=HEADERS)
    assert created.status == 201, await created.text()
    assert (await created.json())["url"] == stored
    sub_id = (await created.json())["id"]
    read = await client.get(f"/v1/subscribers/{sub_id}", headers=HEADERS)
    assert (await read.json())["url"] == stored


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.\U0001fbf1/hook",
        "http://0x7f.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://user@example.com/hook",
        "http://example.com/hook#fragment",
    ],
)
async def test_patch_applies_the_same_rule_and_changes_nothing(
    client: TestClient, url: str
) -> None:
    created = await client.post(
        "/v1/subscribers", json=body("https://example.com/hook"), headers=HEADERS
    )
    sub_id = (await created.json())["id"]
    resp = await client.patch(f"/v1/subscribers/{sub_id}", json={"url": url}, headers=HEADERS)
    assert await refused_fields(resp) == ["url"]
    read = await client.get(f"/v1/subscribers/{sub_id}", headers=HEADERS)
    assert (await read.json())["url"] == "https://example.com/hook"


async def test_patch_stores_the_client_form_of_an_accepted_url(client: TestClient) -> None:
    created = await client.post(
        "/v1/subscribers", json=body("https://example.com/hook"), headers=HEADERS
    )
    sub_id = (await created.json())["id"]
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"url": "HTTPS://Example.COM:443/new"}, headers=HEADERS
    )
    assert (await resp.json())["url"] == "https://example.com/new"


@pytest.mark.parametrize(
    "url", ["http://localhost/hook", "http://[::1]/hook", "http://127.0.0.1/hook"]
)
async def test_canonical_loopback_is_still_refused_by_the_guard(
    strict_client: TestClient, url: str
) -> None:
    resp = await strict_client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


# ---------------------------------------------------------------- A: the rule as a regex

URL_RE = re.compile(URL_PATTERN)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.from_regex(URL_RE, fullmatch=True))
def test_every_url_the_pattern_matches_is_accepted_and_its_stored_form_is_stable(
    url: str,
) -> None:
    assert url_shape_refusal(url) is None
    stored = canonical_url(url)
    assert canonical_url(stored) == stored
    assert URL(stored).raw_host == URL(url).raw_host
    assert url_shape_refusal(stored) is None


URLISH = st.text(
    alphabet=st.sampled_from(
        [
            *"hH:/.[]@%?#-_ \t\r\n\x1b\\~!$&'()*+,;=",
            *"0123456789abcdefxX",
            *("\U0001fbf1", "\uff11", "\u3002", "\u24db", "\u00fc"),
        ]
    ),
    max_size=40,
)


@PROPERTY
@given(prefix=st.sampled_from(["http://", "https://", "HTTP://", "http:/", ""]), rest=URLISH)
def test_nothing_the_pattern_refuses_is_accepted(prefix: str, rest: str) -> None:
    url = prefix + rest
    if url_shape_refusal(url) is None:
        assert URL_RE.fullmatch(url)


def _ipv6_spellings(groups: list[int]) -> set[str]:
    """Every way to write these eight groups: any zero run compressed or none, with and
    without leading zeros, in lower and upper case."""
    runs = [
        (i, j)
        for i, j in itertools.combinations(range(9), 2)
        if all(group == 0 for group in groups[i:j])
    ]
    spellings = set()
    for form in ("{:x}", "{:04x}", "{:X}"):
        parts = [form.format(group) for group in groups]
        spellings.add(":".join(parts))
        spellings.update(":".join(parts[:i]) + "::" + ":".join(parts[j:]) for i, j in runs)
    return spellings


def test_ipv6_hosts_are_accepted_exactly_in_their_canonical_spelling() -> None:
    values = (1, 0xA, 0x10, 0xA0, 0x7F00, 0xFFFF)
    for mask, value in itertools.product(range(256), values):
        groups = [0 if mask >> i & 1 else value for i in range(8)]
        for spelling in _ipv6_spellings(groups):
            ip = ipaddress.IPv6Address(spelling)
            canonical = ip.ipv4_mapped is None and ip.compressed == spelling.lower()
            url = f"http://[{spelling}]/"
            assert (url_shape_refusal(url) is None) is canonical, spelling
            assert (URL_RE.fullmatch(url) is not None) is canonical, spelling


# ---------------------------------------------------------- A: delivery sees the client's host

STORED_BEFORE_THE_RULE = [
    "http://127.0.0.\U0001fbf1/hook",
    "http://\uff11\uff12\uff17.0.0.1/hook",
    "http://127\u30020\u30020\u30021/hook",
    "http://0x7f.1/hook",
    "http://2130706433/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[0:0:0:0:0:ffff:7f00:1]/hook",
    "http://[fe80::1%25eth0]/hook",
]


@pytest.mark.parametrize("url", STORED_BEFORE_THE_RULE)
def test_literal_host_check_judges_the_address_the_client_connects_to(url: str) -> None:
    assert literal_host_refusal(url) is not None


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "http://93.184.216.34/hook", "http://[2606:4700::1]/"]
)
def test_literal_host_check_lets_names_and_public_addresses_through(url: str) -> None:
    assert literal_host_refusal(url) is None


async def _attempted(client: TestClient, sub_id: str, deadline: float = 10.0) -> dict[str, Any]:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        listed = await client.get(f"/v1/deliveries?subscriber_id={sub_id}", headers=HEADERS)
        items = (await listed.json())["items"]
        if items and items[0]["attempt_count"] >= 1:
            detail = await client.get(f"/v1/deliveries/{items[0]['id']}", headers=HEADERS)
            return await detail.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no attempted delivery for {sub_id} within {deadline}s")


@pytest.mark.parametrize(
    "spell",
    [
        lambda port: f"http://127.0.0.\U0001fbf1:{port}/hook",
        lambda port: f"http://\uff11\uff12\uff17.0.0.1:{port}/hook",
        lambda port: f"http://0x7f.1:{port}/hook",
        lambda port: f"http://[::ffff:7f00:1]:{port}/hook",
    ],
    ids=["segmented-digit", "fullwidth", "hex", "ipv4-mapped"],
)
async def test_url_stored_before_the_rule_is_refused_at_delivery(
    aiohttp_client: Any, redis: Redis, key_prefix: str, spell: Callable[[int], str]
) -> None:
    settings = make_settings(key_prefix, allow_private_targets=False, retry_schedule=(30.0,))
    app = create_app(settings, redis=redis, run_workers=True)
    client = await aiohttp_client(app)
    async with Receiver() as receiver:
        port = int(receiver.base_url.rsplit(":", 1)[1])
        # Written straight to the store, as registration used to let it through.
        sub = await app[SUBSCRIBERS].create(name="old", url=spell(port), scopes=SCOPES)
        assert (await client.post("/webhooks", json=platform_event("ContactCreate"))).status == 202
        delivery = await _attempted(client, sub.id)
        assert delivery["status"] != "succeeded"
        assert "refused target" in delivery["attempts"][0]["error"]
        await asyncio.sleep(0.2)
        assert receiver.requests() == []


# ---------------------------------------------------------------- B: never the router itself


def fake_resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    """`socket.getaddrinfo` answering `answers` (name -> address), the real one otherwise."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        address = answers[name]
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port), 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/webhooks",
        "http://localhost:8080/webhooks",
        "http://0.0.0.0:8080/webhooks",
        "http://[::]:8080/webhooks",
        "http://router.loop.test:8080/webhooks",
    ],
)
async def test_url_of_the_routers_listen_address_is_refused_with_private_targets_allowed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    fake_resolver(monkeypatch, {"router.loop.test": "127.0.0.1"})
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]
    assert "this router itself" in (await resp.json())["errors"][0]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/webhooks",
        "http://127.0.0.2:8080/webhooks",
        "http://[::1]:8080/webhooks",
        "http://localhost:8080/webhooks",
        "http://router.loop.test:8080/webhooks",
    ],
)
async def test_any_local_address_on_the_port_is_the_router_when_it_listens_on_all(
    aiohttp_client: Any,
    redis: Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
) -> None:
    fake_resolver(monkeypatch, {"router.loop.test": "127.0.0.3"})
    settings = make_settings(key_prefix, host="0.0.0.0", port=8080)
    client = await aiohttp_client(create_app(settings, redis=redis))
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8081/webhooks", "http://127.0.0.2:8080/webhooks"]
)
async def test_another_port_or_address_than_the_listen_address_is_accepted(
    client: TestClient, url: str
) -> None:
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert resp.status == 201, await resp.text()


PUBLIC_URLS = ("https://hooks.example.com", "http://lb.example.net:8000/router")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/webhooks",
        "https://HOOKS.example.com:443/anything",
        "https://hooks.example.com",
        "http://lb.example.net:8000/router/webhooks",
        "http://lb.example.net:8000/elsewhere",
    ],
)
async def test_url_with_the_origin_of_a_public_url_is_refused(
    aiohttp_client: Any, redis: Redis, key_prefix: str, url: str
) -> None:
    settings = make_settings(key_prefix, public_urls=PUBLIC_URLS)
    client = await aiohttp_client(create_app(settings, redis=redis))
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert await refused_fields(resp) == ["url"]
    assert "public URL" in (await resp.json())["errors"][0]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:8443/webhooks",
        "http://hooks.example.com/webhooks",
        "https://other.example.com/webhooks",
        "http://lb.example.net:8001/router",
    ],
)
async def test_url_of_another_origin_than_the_public_urls_is_accepted(
    aiohttp_client: Any, redis: Redis, key_prefix: str, url: str
) -> None:
    settings = make_settings(key_prefix, public_urls=PUBLIC_URLS)
    client = await aiohttp_client(create_app(settings, redis=redis))
    resp = await client.post("/v1/subscribers", json=body(url), headers=HEADERS)
    assert resp.status == 201, await resp.text()


async def test_patch_to_the_routers_own_address_is_refused(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, public_urls=PUBLIC_URLS)
    client = await aiohttp_client(create_app(settings, redis=redis))
    created = await client.post(
        "/v1/subscribers", json=body("https://example.com/hook"), headers=HEADERS
    )
    sub_id = (await created.json())["id"]
    for url in ("http://127.0.0.1:8080/webhooks", "https://hooks.example.com/webhooks"):
        resp = await client.patch(f"/v1/subscribers/{sub_id}", json={"url": url}, headers=HEADERS)
        assert await refused_fields(resp) == ["url"]


async def test_own_address_check_resolves_a_named_listen_host() -> None:
    own = OwnAddress(host="localhost", port=8080)
    assert await url_refusal("http://127.0.0.1:8080/webhooks", True, own) is not None
    assert await url_refusal("http://127.0.0.1:8079/webhooks", True, own) is None


def test_public_urls_setting_reads_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_PUBLIC_URLS", "https://a.example.com, http://b.example.com:8000/r")
    assert load_settings().public_urls == ("https://a.example.com", "http://b.example.com:8000/r")


def test_public_urls_setting_is_unset_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_PUBLIC_URLS", raising=False)
    assert load_settings().public_urls is None


@pytest.mark.parametrize("value", ["hooks.example.com", "ftp://a.example.com", "https://"])
def test_public_urls_setting_refuses_what_is_not_an_absolute_http_url(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ROUTER_PUBLIC_URLS", f"https://ok.example.com,{value}")
    with pytest.raises(SettingsError, match=r"^ROUTER_PUBLIC_URLS: "):
        load_settings()


async def test_a_resolver_that_never_answers_does_not_hold_registration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The system resolver stalled on one generated name for good in a CI run, and the API
    # request (and the suite) waited with it.
    loop = asyncio.get_running_loop()
    stalled: list[str] = []

    async def never(host: str, *args: Any, **kwargs: Any) -> Any:
        stalled.append(host)
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "getaddrinfo", never)
    monkeypatch.setattr("router.pipeline.targets.RESOLVE_TIMEOUT", 0.2)
    started = time.monotonic()
    # Resolved both to judge the target and to see whether it is the router itself; neither
    # lookup answering, the name is treated as one that does not resolve (delivery re-checks).
    own = OwnAddress(host="router.internal", port=8080)
    assert await url_refusal("https://hooks.example/in", allow_private=False, own=own) is None
    assert await url_refusal("http://g:8080/in", allow_private=False, own=own) is None
    assert time.monotonic() - started < 2.0
    assert stalled and set(stalled) <= {"hooks.example", "g", "router.internal"}
