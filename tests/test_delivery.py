"""End to end in one process: events posted to /webhooks reach real receivers (docs/architecture.md,
"The routing rule" and "The delivery state machine").

The app runs its dispatcher, worker and retry scheduler (`run_workers=True`); subscribers are
registered through the operator API and point at a `Receiver`; every wait polls against a
deadline. Settings are fast (retries 0.2 s apart) so a whole retry story takes about a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from standardwebhooks.webhooks import WebhookVerificationError

from router.core.records import WorkItem
from router.http.app import create_app
from router.http.routes.deliveries import breaker_view
from router.pipeline.delivery import WaitingWork
from router.services import build_services
from router.storage.ledger import Ledger
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import (
    COMPANY_ID,
    LOCATION_ID,
    OTHER_LOCATION_ID,
    PAYLOADS,
    encode,
    ingest_path,
    platform_event,
)
from tests.receivers import Receiver, Reply, verify_signature

DEADLINE = 10.0
SCHEDULE = (0.2, 0.2, 0.2)
FAST: dict[str, Any] = {
    "retry_schedule": SCHEDULE,
    "reclaim_after": 2,
    "breaker_threshold": 1000,
    "delivery_timeout": 2,
}

# The scope each catalog event needs (docs/architecture.md: exact; a `.write` scope unlocks no
# `.readonly` event). Stated here, not read from the catalog, so the test checks it.
REQUIRED_SCOPE = {
    "CampaignStatusUpdate": "campaigns.readonly",
    "ContactCreate": "contacts.readonly",
    "ContactDelete": "contacts.readonly",
    "ContactDndUpdate": "contacts.readonly",
    "ContactTagUpdate": "contacts.readonly",
    "NoteCreate": "contacts.readonly",
    "NoteDelete": "contacts.readonly",
    "TaskCreate": "contacts.readonly",
    "TaskDelete": "contacts.readonly",
    "ConversationUnreadWebhook": "conversations.readonly",
    "InboundMessage": "conversations/message.readonly",
    "OutboundMessage": "conversations/message.readonly",
    "ConversationProviderOutboundMessage": "conversations/message.write",
    "OpportunityCreate": "opportunities.readonly",
    "OpportunityDelete": "opportunities.readonly",
    "OpportunityStageUpdate": "opportunities.readonly",
    "OpportunityStatusUpdate": "opportunities.readonly",
    "OpportunityMonetaryValueUpdate": "opportunities.readonly",
}
WRITE_ONLY = ["contacts.write", "conversations.write", "opportunities.write"]


class Router:
    """The app under test, driven the way the platform and an operator drive it."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=self.admin, **kwargs)
        body = await resp.json() if resp.status != 204 else None
        assert resp.status == expect, (method, path, resp.status, body)
        return body

    async def subscribe(self, url: str, scopes: list[str], **fields: Any) -> dict[str, Any]:
        """Register a subscriber; the answer includes its full `secret`."""
        body = {"name": url.rsplit("/", 1)[-1] or "app", "url": url, "scopes": scopes, **fields}
        return await self.call("POST", "/v1/subscribers", 201, json=body)

    async def publish_raw(self, body: bytes, path: str = "/webhooks") -> str:
        resp = await self.client.post(path, data=body, headers={"Content-Type": "application/json"})
        answer = await resp.json()
        assert resp.status == 202, answer
        assert answer["status"] == "accepted", answer
        return answer["event_id"]

    async def publish(self, event: str, **changes: Any) -> str:
        """Post `event` as the platform sends it; returns the accepted event's id."""
        return await self.publish_raw(encode(platform_event(event, **changes)), ingest_path(event))

    async def event(self, event_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/events/{event_id}")

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/deliveries/{delivery_id}")

    async def deliveries(self, **query: Any) -> dict[str, Any]:
        return await self.call("GET", "/v1/deliveries", params=query)

    async def dispatched(self, event_id: str, count: int) -> list[dict[str, Any]]:
        """The event's deliveries once it has been fanned out into `count` of them.

        Fan-out creates all of an event's deliveries at once, so waiting for the first one
        is waiting for all of them.
        """
        if count == 0:
            raise ValueError("wait for a delivery elsewhere; an event with none shows nothing")
        found = await until(lambda: self.event(event_id), lambda e: len(e["deliveries"]) > 0)
        assert len(found["deliveries"]) == count, found["deliveries"]
        return found["deliveries"]

    async def delivery_for(self, event_id: str, subscriber_id: str) -> str:
        found = await until(
            lambda: self.event(event_id),
            lambda e: any(d["subscriber_id"] == subscriber_id for d in e["deliveries"]),
        )
        return next(d["id"] for d in found["deliveries"] if d["subscriber_id"] == subscriber_id)

    async def settled(self, delivery_id: str, status: str) -> dict[str, Any]:
        """The delivery once it is in `status` (waits up to the deadline)."""
        return await until(lambda: self.delivery(delivery_id), lambda d: d["status"] == status)


async def until(
    read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], deadline: float = DEADLINE
) -> Any:
    """Poll `read` until `done(value)`; fails with the last value after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"not reached within {deadline}s; last seen: {value}")
        await asyncio.sleep(0.05)


RouterFactory = Callable[..., Awaitable[Router]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


@pytest.fixture
def start_router(aiohttp_client: Any, redis: Redis, key_prefix: str) -> RouterFactory:
    """Start the app with its workers; keyword arguments override the fast settings."""

    async def start(**overrides: Any) -> Router:
        settings = make_settings(key_prefix, **{**FAST, **overrides})
        return Router(await aiohttp_client(create_app(settings, redis=redis, run_workers=True)))

    return start


@pytest.fixture
async def router(start_router: RouterFactory) -> Router:
    return await start_router()


def attempt_numbers(hits: list[Any]) -> list[str | None]:
    return [h.header("X-Router-Attempt") for h in hits]


# ---------------------------------------------------------------- routing


@pytest.fixture
async def scope_holders(router: Router, receiver: Receiver) -> dict[str, dict[str, Any]]:
    """One subscriber per distinct required scope, at /<scope>, plus a `.write`-only one."""
    holders = {}
    for scope in sorted(set(REQUIRED_SCOPE.values())):
        holders[scope] = await router.subscribe(receiver.url(f"/{scope}"), [scope])
    holders["write-only"] = await router.subscribe(receiver.url("/write-only"), WRITE_ONLY)
    return holders


@pytest.mark.parametrize("event", sorted(PAYLOADS))
async def test_catalog_event_reaches_exactly_the_subscribers_entitled_to_it(
    router: Router,
    receiver: Receiver,
    scope_holders: dict[str, dict[str, Any]],
    event: str,
) -> None:
    entitled = scope_holders[REQUIRED_SCOPE[event]]
    body = encode(platform_event(event))
    event_id = await router.publish_raw(body, ingest_path(event))
    (delivery,) = await router.dispatched(event_id, 1)
    assert delivery["subscriber_id"] == entitled["id"]
    (hit,) = await receiver.wait_for(f"/{REQUIRED_SCOPE[event]}", 1)
    assert hit.body == body
    assert hit.header("X-Router-Event") == event
    assert hit.header("X-Router-Event-Id") == event_id
    assert hit.header("webhook-id") == delivery["id"]
    verify_signature(entitled["secret"], hit)
    await router.settled(delivery["id"], "succeeded")
    assert [r.path for r in receiver.requests()] == [f"/{REQUIRED_SCOPE[event]}"]


async def test_conversation_unread_update_is_delivered_as_conversation_unread_webhook(
    router: Router, receiver: Receiver
) -> None:
    await router.subscribe(receiver.url("/inbox"), ["conversations.readonly"])
    await router.publish("ConversationUnreadWebhook")
    (hit,) = await receiver.wait_for("/inbox", 1)
    assert hit.header("X-Router-Event") == "ConversationUnreadWebhook"
    assert b'"type": "ConversationUnreadUpdate"' in hit.body


async def test_write_scope_does_not_unlock_the_readonly_event(
    router: Router, receiver: Receiver
) -> None:
    writer = await router.subscribe(receiver.url("/writer"), ["contacts.write"])
    reader = await router.subscribe(receiver.url("/reader"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    (delivery,) = await router.dispatched(event_id, 1)
    assert delivery["subscriber_id"] == reader["id"] != writer["id"]


async def test_message_write_scope_gets_provider_messages_but_not_inbound_ones(
    router: Router, receiver: Receiver
) -> None:
    provider = await router.subscribe(receiver.url("/provider"), ["conversations/message.write"])
    reader = await router.subscribe(receiver.url("/reader"), ["conversations/message.readonly"])
    outbound = await router.publish("ConversationProviderOutboundMessage")
    inbound = await router.publish("InboundMessage")
    assert [d["subscriber_id"] for d in await router.dispatched(outbound, 1)] == [provider["id"]]
    assert [d["subscriber_id"] for d in await router.dispatched(inbound, 1)] == [reader["id"]]


async def test_location_binding_limits_deliveries_to_its_locations(
    router: Router, receiver: Receiver
) -> None:
    here = await router.subscribe(
        receiver.url("/here"), ["contacts.readonly"], location_ids=[LOCATION_ID]
    )
    there = await router.subscribe(
        receiver.url("/there"), ["contacts.readonly"], location_ids=[OTHER_LOCATION_ID]
    )
    unbound = await router.subscribe(receiver.url("/any"), ["contacts.readonly"])
    first = await router.publish("ContactCreate", locationId=LOCATION_ID)
    second = await router.publish("ContactCreate", locationId=OTHER_LOCATION_ID)
    assert {d["subscriber_id"] for d in await router.dispatched(first, 2)} == {
        here["id"],
        unbound["id"],
    }
    assert {d["subscriber_id"] for d in await router.dispatched(second, 2)} == {
        there["id"],
        unbound["id"],
    }


async def test_company_binding_admits_any_location_of_that_company(
    router: Router, receiver: Receiver
) -> None:
    agency = await router.subscribe(
        receiver.url("/agency"), ["contacts.readonly"], company_id=COMPANY_ID
    )
    await router.subscribe(receiver.url("/rival"), ["contacts.readonly"], company_id="CoRival01")
    witness = await router.subscribe(receiver.url("/any"), ["contacts.readonly"])
    ours = await router.publish("ContactCreate", locationId=OTHER_LOCATION_ID, companyId=COMPANY_ID)
    no_company = await router.publish("ContactCreate", locationId=OTHER_LOCATION_ID)
    assert {d["subscriber_id"] for d in await router.dispatched(ours, 2)} == {
        agency["id"],
        witness["id"],
    }
    assert [d["subscriber_id"] for d in await router.dispatched(no_company, 1)] == [witness["id"]]


async def test_event_filter_admits_only_the_events_it_names(
    router: Router, receiver: Receiver
) -> None:
    deletions = await router.subscribe(
        receiver.url("/deletions"), ["contacts.readonly"], events=["ContactDelete"]
    )
    witness = await router.subscribe(receiver.url("/any"), ["contacts.readonly"])
    created = await router.publish("ContactCreate")
    deleted = await router.publish("ContactDelete")
    assert [d["subscriber_id"] for d in await router.dispatched(created, 1)] == [witness["id"]]
    assert {d["subscriber_id"] for d in await router.dispatched(deleted, 2)} == {
        deletions["id"],
        witness["id"],
    }


# ---------------------------------------------------------------- what is sent


async def test_raw_body_is_delivered_byte_for_byte(router: Router, receiver: Receiver) -> None:
    await router.subscribe(receiver.url("/raw"), ["contacts.readonly"])
    raw = (
        b'{ "zeta":1 ,\n "type" : "ContactCreate","locationId":"' + LOCATION_ID.encode() + b'",'
        b'"name":"Z\\u00fcrich \\ud83d\\ude00", "city":"caf\xc3\xa9","n":[1.50,2e3]}\r\n'
    )
    await router.publish_raw(raw)
    (hit,) = await receiver.wait_for("/raw", 1)
    assert hit.body == raw
    assert hit.header("Content-Type") == "application/json"


async def test_delivery_signature_verifies_with_the_subscriber_secret_only(
    router: Router, receiver: Receiver
) -> None:
    sub = await router.subscribe(receiver.url("/signed"), ["contacts.readonly"])
    await router.publish("ContactCreate")
    (hit,) = await receiver.wait_for("/signed", 1)
    assert verify_signature(sub["secret"], hit)["type"] == "ContactCreate"
    other = await router.subscribe(receiver.url("/other"), ["campaigns.readonly"])
    with pytest.raises(WebhookVerificationError):
        verify_signature(other["secret"], hit)


async def test_during_rotation_old_and_new_secrets_both_verify(
    router: Router, receiver: Receiver
) -> None:
    sub = await router.subscribe(receiver.url("/rotating"), ["contacts.readonly"])
    rotated = await router.call("POST", f"/v1/subscribers/{sub['id']}/secret/rotate")
    assert rotated["secret"] != sub["secret"]
    await router.publish("ContactCreate")
    (hit,) = await receiver.wait_for("/rotating", 1)
    verify_signature(sub["secret"], hit)
    verify_signature(rotated["secret"], hit)


async def test_after_the_grace_period_only_the_new_secret_verifies(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(secret_grace=0)
    sub = await router.subscribe(receiver.url("/rotated"), ["contacts.readonly"])
    rotated = await router.call("POST", f"/v1/subscribers/{sub['id']}/secret/rotate")
    await router.publish("ContactCreate")
    (hit,) = await receiver.wait_for("/rotated", 1)
    verify_signature(rotated["secret"], hit)
    with pytest.raises(WebhookVerificationError):
        verify_signature(sub["secret"], hit)


# ---------------------------------------------------------------- retries


async def test_answer_is_asked_for_uncompressed_and_logged_as_text(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/ok", then=Reply(200, body=b"thanks, got it"))
    sub = await router.subscribe(receiver.url("/ok"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    (hit,) = await receiver.wait_for("/ok", 1)
    # With aiohttp's default "gzip, deflate", a receiver may compress its answer, which
    # the worker does not decompress: the log would hold the compressed bytes as text.
    assert hit.header("Accept-Encoding") == "identity"
    delivery = await router.settled(await router.delivery_for(event_id, sub["id"]), "succeeded")
    assert delivery["attempts"][0]["response_body"] == "thanks, got it"


async def test_receiver_failing_twice_gets_three_attempts_of_one_delivery(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/flaky", 500, 500)
    sub = await router.subscribe(receiver.url("/flaky"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    hits = await receiver.wait_for("/flaky", 3)
    assert attempt_numbers(hits) == ["1", "2", "3"]
    delivery_id = await router.delivery_for(event_id, sub["id"])
    assert {h.header("webhook-id") for h in hits} == {delivery_id}
    assert len({h.body for h in hits}) == 1
    for hit in hits:
        verify_signature(sub["secret"], hit)
    delivery = await router.settled(delivery_id, "succeeded")
    assert delivery["attempt_count"] == 3
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert all(a["duration_ms"] >= 0 for a in delivery["attempts"])
    assert all(a["at"].endswith("Z") for a in delivery["attempts"])
    assert len(receiver.requests("/flaky")) == 3


async def test_metrics_count_each_outcome_and_time_each_attempt(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/counted", 500, 500)
    sub = await router.subscribe(receiver.url("/counted"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    await router.settled(await router.delivery_for(event_id, sub["id"]), "succeeded")
    resp = await router.client.get("/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }

    def outcome(name: str) -> float:
        return samples.get(("router_deliveries_total", (("outcome", name),)), 0)

    assert (outcome("created"), outcome("failed"), outcome("succeeded")) == (1, 2, 1)
    assert samples[("router_attempt_duration_seconds_count", ())] == 3
    assert samples[("router_attempt_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("router_attempt_duration_seconds_sum", ())] > 0
    # Accepted to delivered: the two retries alone waited 2 x 0.2 s.
    assert samples[("router_delivery_latency_seconds_count", ())] == 1
    assert samples[("router_delivery_latency_seconds_bucket", (("le", "0.25"),))] == 0
    assert samples[("router_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 1


async def test_receiver_always_failing_is_dead_after_the_last_scheduled_attempt(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/down", then=500)
    sub = await router.subscribe(receiver.url("/down"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    delivery_id = await router.delivery_for(event_id, sub["id"])
    delivery = await router.settled(delivery_id, "dead")
    assert delivery["attempt_count"] == len(SCHEDULE) + 1
    assert len(receiver.requests("/down")) == len(SCHEDULE) + 1
    assert delivery["reason"]
    dead = await router.deliveries(status="dead")
    assert [d["id"] for d in dead["items"]] == [delivery_id]


async def test_replay_of_dead_deliveries_delivers_them_once_the_receiver_recovers(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/down", then=500)
    sub = await router.subscribe(receiver.url("/down"), ["contacts.readonly"])
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    await router.settled(delivery_id, "dead")
    receiver.program("/down", then=200)
    replayed = await router.call(
        "POST", f"/v1/subscribers/{sub['id']}/replay", 202, json={"status": "dead"}
    )
    assert replayed == {"requeued": 1}
    delivery = await router.settled(delivery_id, "succeeded")
    assert delivery["attempts"][-1]["status_code"] == 200
    hits = receiver.requests("/down")
    assert len(hits) == len(SCHEDULE) + 2
    assert {h.header("webhook-id") for h in hits} == {delivery_id}
    assert (await router.deliveries(status="dead"))["items"] == []


async def test_retry_of_a_dead_delivery_delivers_it_once_the_receiver_recovers(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/down", then=500)
    sub = await router.subscribe(receiver.url("/down"), ["contacts.readonly"])
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    await router.settled(delivery_id, "dead")
    receiver.program("/down", then=200)
    retried = await router.call("POST", f"/v1/deliveries/{delivery_id}/retry", 202)
    assert retried == {"requeued": 1}
    await router.settled(delivery_id, "succeeded")
    assert len(receiver.requests("/down")) == len(SCHEDULE) + 2


async def test_retry_of_an_unknown_delivery_is_404(router: Router) -> None:
    body = await router.call("POST", "/v1/deliveries/dlv_nosuchdelivery/retry", 404)
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_gone_kills_the_delivery_and_disables_the_subscriber(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/gone", then=410)
    sub = await router.subscribe(receiver.url("/gone"), ["contacts.readonly"])
    witness = await router.subscribe(receiver.url("/witness"), ["contacts.readonly"])
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    delivery = await router.settled(delivery_id, "dead")
    assert delivery["attempt_count"] == 1
    view = await router.call("GET", f"/v1/subscribers/{sub['id']}")
    assert view["status"] == "disabled"
    assert "410" in view["status_reason"]
    later = await router.publish("ContactCreate")
    assert [d["subscriber_id"] for d in await router.dispatched(later, 1)] == [witness["id"]]
    await receiver.wait_for("/witness", 2)
    assert len(receiver.requests("/gone")) == 1


async def test_disabled_subscriber_receives_again_once_set_active(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/gone", 410)
    sub = await router.subscribe(receiver.url("/gone"), ["contacts.readonly"])
    first = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    await router.settled(first, "dead")
    view = await router.call("PATCH", f"/v1/subscribers/{sub['id']}", json={"status": "active"})
    assert view["status"] == "active"
    second = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    await router.settled(second, "succeeded")
    assert len(receiver.requests("/gone")) == 2


async def test_retry_after_on_429_delays_the_next_attempt(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/busy", Reply(429, headers={"Retry-After": "1"}))
    await router.subscribe(receiver.url("/busy"), ["contacts.readonly"])
    await router.publish("ContactCreate")
    first, second = await receiver.wait_for("/busy", 2)
    gap = second.at - first.at
    # Honoured (1 s instead of 0.2 s), and never beyond 10x the scheduled delay (+ polling).
    assert 0.95 <= gap <= 10 * SCHEDULE[0] + 1.0


async def test_retry_after_on_503_is_honoured_too(router: Router, receiver: Receiver) -> None:
    receiver.program("/unavailable", Reply(503, headers={"Retry-After": "1"}))
    await router.subscribe(receiver.url("/unavailable"), ["contacts.readonly"])
    await router.publish("ContactCreate")
    first, second = await receiver.wait_for("/unavailable", 2)
    assert second.at - first.at >= 0.95


async def test_retry_after_on_other_failures_is_ignored(router: Router, receiver: Receiver) -> None:
    receiver.program("/broken", Reply(500, headers={"Retry-After": "5"}))
    await router.subscribe(receiver.url("/broken"), ["contacts.readonly"])
    await router.publish("ContactCreate")
    first, second = await receiver.wait_for("/broken", 2)
    assert second.at - first.at < 2.0


async def test_redirect_is_a_failed_attempt_and_is_not_followed(
    router: Router, receiver: Receiver
) -> None:
    receiver.program("/moved", Reply(301, headers={"Location": receiver.url("/elsewhere")}))
    sub = await router.subscribe(receiver.url("/moved"), ["contacts.readonly"])
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    delivery = await router.settled(delivery_id, "succeeded")
    assert [a["status_code"] for a in delivery["attempts"]] == [301, 200]
    assert delivery["attempts"][0]["error"]
    assert receiver.requests("/elsewhere") == []


async def test_receiver_slower_than_the_timeout_is_a_failed_attempt(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(delivery_timeout=0.5)
    receiver.program("/slow", Reply(200, delay=2.0))
    sub = await router.subscribe(receiver.url("/slow"), ["contacts.readonly"])
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    delivery = await router.settled(delivery_id, "succeeded")
    assert len(delivery["attempts"]) == 2
    timed_out = delivery["attempts"][0]
    assert timed_out["status_code"] is None
    assert "timed out" in timed_out["error"]


# ---------------------------------------------------------------- the rule, again, per attempt


@pytest.mark.parametrize(
    ("method", "suffix", "expect", "body", "reason"),
    [
        pytest.param(
            "POST",
            "/grants",
            200,
            {"remove": ["contacts.readonly"]},
            "contacts.readonly",
            id="scope-revoked",
        ),
        pytest.param("PATCH", "", 200, {"status": "paused"}, "paused", id="paused"),
        pytest.param("DELETE", "", 204, None, "deleted", id="deleted"),
    ],
)
async def test_a_change_to_the_subscriber_stops_a_delivery_waiting_for_retry(
    start_router: RouterFactory,
    receiver: Receiver,
    method: str,
    suffix: str,
    expect: int,
    body: dict[str, Any] | None,
    reason: str,
) -> None:
    router = await start_router(retry_schedule=(1.5, 1.5))
    receiver.program("/crm", then=500)
    sub = await router.subscribe(
        receiver.url("/crm"), ["contacts.readonly", "opportunities.readonly"]
    )
    delivery_id = await router.delivery_for(await router.publish("ContactCreate"), sub["id"])
    await router.settled(delivery_id, "failed")
    path = f"/v1/subscribers/{sub['id']}{suffix}"
    await router.call(method, path, expect, **({} if body is None else {"json": body}))
    delivery = await router.settled(delivery_id, "skipped")
    assert reason in delivery["reason"]
    assert len(receiver.requests("/crm")) == 1


# ---------------------------------------------------------------- protecting receivers


async def test_open_breaker_holds_deliveries_until_a_probe_succeeds(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(
        retry_schedule=(0.2,) * 6, breaker_threshold=3, breaker_probe_interval=1
    )
    receiver.program("/fragile", 500, 500, 500)
    sub = await router.subscribe(receiver.url("/fragile"), ["contacts.readonly"])
    first = await router.publish("ContactCreate")
    failures = await receiver.wait_for("/fragile", 3)
    held = [await router.publish("ContactCreate") for _ in range(3)]
    ids = [await router.delivery_for(e, sub["id"]) for e in [first, *held]]
    for delivery_id in ids:
        await router.settled(delivery_id, "succeeded")
    hits = receiver.requests("/fragile")
    assert len(hits) == 3 + len(ids)
    # Nothing reaches the receiver while the breaker is open (1 s after the third failure).
    assert hits[3].at - failures[2].at >= 0.9
    for held_id in ids[1:]:
        assert (await router.delivery(held_id))["attempt_count"] == 1


async def test_slow_subscriber_gets_no_more_than_its_concurrency_and_delays_no_one(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(subscriber_concurrency=2)
    receiver.program("/slow", then=Reply(200, delay=1.0))
    await router.subscribe(receiver.url("/slow"), ["contacts.readonly"])
    await router.subscribe(receiver.url("/quick"), ["contacts.readonly"])
    started = time.monotonic()
    for _ in range(6):
        await router.publish("ContactCreate")
    quick = await receiver.wait_for("/quick", 6)
    assert max(h.at for h in quick) - started < 1.0
    slow = await receiver.wait_for("/slow", 6)
    assert receiver.peak_concurrency("/slow") == 2
    assert max(h.at for h in slow) - started >= 2.0


async def test_slow_subscribers_filling_their_queues_do_not_hold_back_a_quick_one(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    # Capacity 4, one attempt per subscriber: two slow subscribers' attempts and their
    # filling local queues take the whole read budget; the quick subscriber's work must
    # still be read (READ_AT_LEAST_EVERY) long before the slow ones answer.
    router = await start_router(worker_concurrency=4, subscriber_concurrency=1)
    for path in ("/slow-a", "/slow-b"):
        receiver.program(path, then=Reply(200, delay=3.0))
        await router.subscribe(receiver.url(path), ["contacts.readonly"])
    await router.subscribe(receiver.url("/quick"), ["contacts.readonly"])
    started = time.monotonic()
    for _ in range(4):
        await router.publish("ContactCreate")
    quick = await receiver.wait_for("/quick", 4)
    assert max(h.at for h in quick) - started < 2.5
    assert len(await receiver.wait_for("/slow-a", 4, deadline=30)) == 4


def test_waiting_work_counts_only_queues_that_are_not_full() -> None:
    waiting = WaitingWork(limit=3)
    a = [WorkItem(f"1-{i}", f"dlv_{i}", "sub_a", "evt") for i in range(4)]
    b = WorkItem("2-0", "dlv_b", "sub_b", "evt")
    assert waiting.offer(a[0]) and waiting.offer(a[1]) and waiting.offer(b)
    assert waiting.pending == 3
    assert waiting.offer(a[2])  # sub_a's queue is full now: its work stops counting
    assert waiting.pending == 1
    assert not waiting.offer(a[3])
    assert waiting.take("sub_a") == a[0]  # room again: it counts again
    assert waiting.pending == 3
    assert waiting.take("sub_b") == b and "sub_b" not in waiting
    assert waiting.take("sub_b") is None
    assert waiting.take_all() == a[1:3] and waiting.pending == 0


# ---------------------------------------------------------------- operator reads


async def test_delivery_list_filters_by_subscriber_status_and_event(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(retry_schedule=(0.2,))
    receiver.program("/down", then=500)
    healthy = await router.subscribe(
        receiver.url("/ok"), ["contacts.readonly", "opportunities.readonly"]
    )
    failing = await router.subscribe(receiver.url("/down"), ["contacts.readonly"])
    events = [await router.publish("ContactCreate") for _ in range(3)]
    events += [await router.publish("OpportunityCreate") for _ in range(2)]
    every = await until(
        lambda: router.deliveries(limit=100),
        lambda page: (
            len(page["items"]) == 8
            and all(d["status"] in ("succeeded", "dead") for d in page["items"])
        ),
    )
    assert every["next_cursor"] is None

    def ids(page: dict[str, Any]) -> set[str]:
        return {d["id"] for d in page["items"]}

    mine = await router.deliveries(subscriber_id=healthy["id"])
    assert len(mine["items"]) == 5
    assert {d["subscriber_id"] for d in mine["items"]} == {healthy["id"]}
    dead = await router.deliveries(status="dead")
    assert ids(dead) == ids(await router.deliveries(subscriber_id=failing["id"]))
    assert {d["status"] for d in dead["items"]} == {"dead"}
    assert len(dead["items"]) == 3
    opportunities = await router.deliveries(event="OpportunityCreate")
    assert {d["event_id"] for d in opportunities["items"]} == set(events[3:])
    both = await router.deliveries(subscriber_id=failing["id"], status="succeeded")
    assert both["items"] == []


async def test_delivery_list_pages_through_every_delivery_once(
    router: Router, receiver: Receiver
) -> None:
    sub = await router.subscribe(receiver.url("/ok"), ["contacts.readonly"])
    for _ in range(7):
        await router.publish("ContactCreate")
    await receiver.wait_for("/ok", 7)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 3, "subscriber_id": sub["id"]}
        if cursor:
            query["cursor"] = cursor
        page = await router.deliveries(**query)
        pages += 1
        assert len(page["items"]) <= 3
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)


async def test_event_lists_its_deliveries(router: Router, receiver: Receiver) -> None:
    first = await router.subscribe(receiver.url("/a"), ["contacts.readonly"])
    second = await router.subscribe(receiver.url("/b"), ["contacts.readonly"])
    await router.subscribe(receiver.url("/c"), ["opportunities.readonly"])
    event_id = await router.publish("ContactCreate")
    await receiver.wait_for("/a", 1)
    await receiver.wait_for("/b", 1)
    event = await until(
        lambda: router.event(event_id),
        lambda e: [d["status"] for d in e["deliveries"]] == ["succeeded", "succeeded"],
    )
    assert {d["subscriber_id"] for d in event["deliveries"]} == {first["id"], second["id"]}
    assert {d["event_id"] for d in event["deliveries"]} == {event_id}
    assert {d["event"] for d in event["deliveries"]} == {"ContactCreate"}


async def test_work_held_by_an_open_breaker_stays_parked_until_the_probe_time(
    start_router: RouterFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regression: each parked delivery's freed slot released the subscriber's parked work
    # straight back to the ready queue, where it was read and parked again, in a loop that
    # lasted as long as the breaker stayed open and delayed every other subscriber's work.
    releases: list[str] = []
    original = Ledger.release_parked

    async def counted(self: Ledger, subscriber_id: str, count: int) -> int:
        releases.append(subscriber_id)
        return await original(self, subscriber_id, count)

    monkeypatch.setattr(Ledger, "release_parked", counted)
    router = await start_router(
        retry_schedule=(0.1,) * 6, breaker_threshold=2, breaker_probe_interval=30
    )
    receiver.program("/fragile", then=500)
    sub = await router.subscribe(receiver.url("/fragile"), ["contacts.readonly"])
    await router.publish("ContactCreate")
    await receiver.wait_for("/fragile", 2)  # the first attempt and its retry: now open
    held = [await router.publish("ContactCreate") for _ in range(5)]
    ids = [await router.delivery_for(e, sub["id"]) for e in held]
    await asyncio.sleep(1.5)
    assert releases == []
    assert len(receiver.requests("/fragile")) == 2
    for delivery_id in ids:
        assert (await router.delivery(delivery_id))["attempt_count"] == 0


# ---------------------------------------------------------------- health (the UI's subscriber list)


def test_breaker_is_closed_below_the_threshold_open_until_its_time_then_half_open() -> None:
    assert breaker_view({}, 3, 1_000).model_dump() == {
        "state": "closed",
        "consecutive_failures": 0,
        "open_until": None,
    }
    assert breaker_view({"failures": "2"}, 3, 1_000).state == "closed"
    opened = breaker_view({"failures": "3", "open_until": "5000"}, 3, 1_000)
    assert opened.state == "open"
    assert opened.open_until == datetime.fromtimestamp(5, tz=UTC)
    assert breaker_view({"failures": "3", "open_until": "5000"}, 3, 5_000).state == "half_open"


async def test_health_reports_the_failing_subscriber_and_the_healthy_one(
    start_router: RouterFactory, receiver: Receiver
) -> None:
    router = await start_router(breaker_threshold=2, breaker_probe_interval=60)
    receiver.program("/down", then=500)
    down = await router.subscribe(receiver.url("/down"), ["contacts.readonly"])
    up = await router.subscribe(receiver.url("/up"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")
    dead_id = await router.delivery_for(event_id, down["id"])
    ok_id = await router.delivery_for(event_id, up["id"])
    await router.settled(ok_id, "succeeded")
    # The breaker opens after two failures and holds the rest of the schedule back, so the
    # delivery stays failed (not yet dead) until the probe interval has passed.
    health = await until(
        lambda: router.call("GET", f"/v1/subscribers/{down['id']}/health"),
        lambda h: h["breaker"]["state"] == "open",
    )

    assert health["breaker"]["state"] == "open"
    assert health["breaker"]["consecutive_failures"] == 2
    assert health["sampled"] == 1
    assert health["success_rate"] == 0.0
    assert health["last_failure"]["id"] == dead_id
    assert health["last_failure"]["last_status_code"] == 500
    assert health["last_failure"]["status"] == "failed"

    healthy = await router.call("GET", f"/v1/subscribers/{up['id']}/health")
    assert healthy["breaker"]["state"] == "closed"
    assert healthy["success_rate"] == 1.0
    assert healthy["last_failure"] is None
    assert len(SCHEDULE) > 2  # else the delivery would be dead before the breaker opened


async def test_health_of_an_unknown_subscriber_is_404(router: Router) -> None:
    answer = await router.call("GET", "/v1/subscribers/sub_nope/health", 404)
    assert answer["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_delivery_loop_run_again_after_a_crash_keeps_its_http_session(
    redis: Redis, key_prefix: str
) -> None:
    # The supervisor runs a crashed loop again; a new session per run left the old one
    # unclosed (asyncio logged "Unclosed client session" at error level), its connections
    # open, in the cluster failover fault test.
    worker = build_services(make_settings(key_prefix), redis=redis).worker_group().worker
    stopped = asyncio.Event()
    stopped.set()  # each run returns at once
    await worker.run(stopped)
    first = worker.session
    await worker.run(stopped)
    assert first is not None and worker.session is first and not first.closed
    await worker.drain(0)
    assert first.closed
