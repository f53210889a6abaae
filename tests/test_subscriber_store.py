"""The subscriber store: records and the scope index stay in step, and routing reads little."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from subscriptions import store as store_module
from subscriptions.catalog import Catalog, load_catalog
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import SubscriberKeys
from subscriptions.models import SigningSecret, Subscriber, SubscriberStatus
from subscriptions.store import StaleVersion, SubscriberStore

URL = "https://example.com/hook"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def store(redis: Redis, key_prefix: str, catalog: Catalog) -> SubscriberStore:
    return SubscriberStore(redis, SubscriberKeys(key_prefix), catalog)


async def make(store: SubscriberStore, **fields: Any) -> Subscriber:
    values: dict[str, Any] = {"name": "app", "url": URL, "scopes": ["contacts.readonly"]}
    values.update(fields)
    return await store.create(**values)


# --- create ---


async def test_create_assigns_a_sub_id_and_a_generated_32_byte_secret(
    store: SubscriberStore,
) -> None:
    sub = await make(store)
    assert sub.id.startswith("sub_")
    assert sub.secret.startswith("whsec_")
    assert len(base64.b64decode(sub.secret.removeprefix("whsec_"))) == 32
    assert sub.status is SubscriberStatus.active
    assert sub.version == 1


async def test_create_keeps_a_given_secret(store: SubscriberStore) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert (await make(store, secret=secret)).secret == secret


async def test_create_stores_what_get_returns(store: SubscriberStore) -> None:
    sub = await make(store, location_ids=["loc1"], company_id="co1")
    assert await store.get(sub.id) == sub


async def test_create_drops_duplicate_scopes_and_treats_empty_filters_as_none(
    store: SubscriberStore,
) -> None:
    sub = await make(
        store, scopes=["contacts.readonly", "contacts.readonly"], events=[], location_ids=[]
    )
    assert sub.scopes == ["contacts.readonly"]
    assert sub.events is None
    assert sub.location_ids is None


async def test_create_indexes_every_scope(store: SubscriberStore) -> None:
    sub = await make(store, scopes=["contacts.readonly", "campaigns.readonly"])
    assert await store.holders_of("contacts.readonly") == [sub.id]
    assert await store.holders_of("campaigns.readonly") == [sub.id]


async def test_import_subscribers_writes_records_and_index(store: SubscriberStore) -> None:
    subs = [bare_subscriber(["campaigns.readonly"]) for _ in range(3)]
    await store.import_subscribers(subs)
    assert await store.get_many([s.id for s in subs]) == subs
    assert await store.holders_of("campaigns.readonly") == sorted(s.id for s in subs)


# --- update ---


async def test_update_replaces_scopes_and_moves_the_index(store: SubscriberStore) -> None:
    sub = await make(store)
    updated = await store.update(sub.id, {"scopes": ["campaigns.readonly"]})
    assert updated is not None and updated.scopes == ["campaigns.readonly"]
    assert await store.holders_of("contacts.readonly") == []
    assert await store.holders_of("campaigns.readonly") == [sub.id]


async def test_update_bumps_the_version_and_updated_at(store: SubscriberStore) -> None:
    sub = await make(store)
    time.sleep(0.002)
    updated = await store.update(sub.id, {"name": "renamed"})
    assert updated is not None
    assert (updated.version, updated.name) == (2, "renamed")
    assert updated.updated_at > sub.updated_at
    assert updated.created_at == sub.created_at


async def test_update_with_a_stale_version_raises_and_changes_nothing(
    store: SubscriberStore,
) -> None:
    sub = await make(store)
    await store.update(sub.id, {"name": "second"})
    with pytest.raises(StaleVersion):
        await store.update(sub.id, {"name": "third"}, expected_version=1)
    assert (await store.get(sub.id)).name == "second"  # type: ignore[union-attr]


async def test_update_of_an_unknown_subscriber_returns_none(store: SubscriberStore) -> None:
    assert await store.update("sub_missing", {"name": "x"}) is None


async def test_update_refused_by_its_check_writes_nothing(store: SubscriberStore) -> None:
    sub = await make(store)

    def refuse(candidate: Subscriber) -> None:
        raise ValueError(candidate.name)

    with pytest.raises(ValueError, match="other"):
        await store.update(
            sub.id, {"name": "other", "scopes": ["campaigns.readonly"]}, check=refuse
        )
    assert await store.get(sub.id) == sub
    assert await store.holders_of("contacts.readonly") == [sub.id]


async def test_update_rejects_fields_the_store_owns(store: SubscriberStore) -> None:
    sub = await make(store)
    with pytest.raises(ValueError, match="secrets"):
        await store.update(sub.id, {"secrets": []})


async def test_update_setting_status_clears_the_status_reason(store: SubscriberStore) -> None:
    sub = await make(store)
    await store.set_status(sub.id, SubscriberStatus.disabled, "receiver answered 410 Gone")
    enabled = await store.update(sub.id, {"status": SubscriberStatus.active})
    assert enabled is not None
    assert (enabled.status, enabled.status_reason) == (SubscriberStatus.active, None)


# --- grants ---


async def test_change_grants_adds_and_removes_in_the_index(store: SubscriberStore) -> None:
    sub = await make(store, scopes=["contacts.readonly", "forms.readonly"])
    updated = await store.change_grants(
        sub.id, add=["campaigns.readonly"], remove=["contacts.readonly"]
    )
    assert updated is not None
    assert updated.scopes == ["forms.readonly", "campaigns.readonly"]
    assert await store.holders_of("contacts.readonly") == []
    assert await store.holders_of("campaigns.readonly") == [sub.id]
    assert await store.holders_of("forms.readonly") == [sub.id]


async def test_change_grants_adding_a_held_scope_keeps_one_copy(store: SubscriberStore) -> None:
    sub = await make(store)
    updated = await store.change_grants(sub.id, add=["contacts.readonly"])
    assert updated is not None and updated.scopes == ["contacts.readonly"]


async def test_change_grants_of_an_unknown_subscriber_returns_none(
    store: SubscriberStore,
) -> None:
    assert await store.change_grants("sub_missing", add=["contacts.readonly"]) is None


# --- delete ---


async def test_remove_deletes_the_record_and_its_index_entries(store: SubscriberStore) -> None:
    sub = await make(store, scopes=["contacts.readonly", "campaigns.readonly"])
    assert await store.remove(sub.id) == sub
    assert await store.get(sub.id) is None
    assert await store.holders_of("contacts.readonly") == []
    assert await store.holders_of("campaigns.readonly") == []
    assert (await store.list_page()).items == []


async def test_remove_of_an_unknown_subscriber_returns_none(store: SubscriberStore) -> None:
    assert await store.remove("sub_missing") is None


async def test_remove_with_a_stale_version_raises_and_keeps_it(store: SubscriberStore) -> None:
    sub = await make(store)
    await store.update(sub.id, {"name": "second"})
    with pytest.raises(StaleVersion):
        await store.remove(sub.id, expected_version=1)
    assert await store.get(sub.id) is not None


# --- listing ---


async def test_list_page_walks_every_subscriber_once_in_id_order(store: SubscriberStore) -> None:
    subs = [bare_subscriber(["contacts.readonly"]) for _ in range(7)]
    await store.import_subscribers(subs)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list_page(limit=3, cursor=cursor)
        seen += [s.id for s in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(s.id for s in subs)


async def test_list_page_by_scope_returns_only_its_holders(store: SubscriberStore) -> None:
    holder = await make(store, scopes=["campaigns.readonly"])
    await make(store)
    page = await store.list_page(scope="campaigns.readonly")
    assert [s.id for s in page.items] == [holder.id]
    assert page.next_cursor is None


async def test_list_page_by_status_returns_only_that_status(store: SubscriberStore) -> None:
    await make(store)
    paused = await make(store)
    await store.update(paused.id, {"status": SubscriberStatus.paused})
    page = await store.list_page(status=SubscriberStatus.paused)
    assert [s.id for s in page.items] == [paused.id]


async def test_list_page_by_status_fills_pages_across_many_non_matching(
    store: SubscriberStore,
) -> None:
    subs = sorted((bare_subscriber(["contacts.readonly"]) for _ in range(250)), key=lambda s: s.id)
    paused_ids = [s.id for s in subs[::50]]
    await store.import_subscribers(
        [
            s.model_copy(update={"status": SubscriberStatus.paused}) if s.id in paused_ids else s
            for s in subs
        ]
    )
    first = await store.list_page(limit=3, status=SubscriberStatus.paused)
    assert [s.id for s in first.items] == paused_ids[:3]
    rest = await store.list_page(limit=3, cursor=first.next_cursor, status=SubscriberStatus.paused)
    assert [s.id for s in rest.items] == paused_ids[3:]
    assert rest.next_cursor is None


# --- secrets ---


async def test_rotation_signs_with_old_and_new_during_the_grace(store: SubscriberStore) -> None:
    sub = await make(store)
    rotated = await store.rotate_secret(sub.id, grace_seconds=3600)
    assert rotated is not None
    stored = await store.get(sub.id)
    assert stored is not None
    assert stored.secret != sub.secret
    assert stored.signing_secrets(now_ms()) == [stored.secret, sub.secret]


async def test_rotation_gives_the_old_secret_an_expiry_of_now_plus_grace(
    store: SubscriberStore,
) -> None:
    sub = await make(store)
    before = now_ms()
    rotated = await store.rotate_secret(sub.id, grace_seconds=3600)
    assert rotated is not None
    old = rotated.secrets[1]
    assert old.secret == sub.secret
    assert old.expires_at is not None
    assert before + 3_600_000 <= old.expires_at <= now_ms() + 3_600_000
    assert rotated.secrets[0].expires_at is None


async def test_after_the_grace_only_the_new_secret_signs(store: SubscriberStore) -> None:
    sub = await make(store)
    rotated = await store.rotate_secret(sub.id, grace_seconds=60)
    assert rotated is not None
    assert rotated.signing_secrets(now_ms() + 61_000) == [rotated.secret]


async def test_rotation_with_no_grace_stops_the_old_secret_at_once(
    store: SubscriberStore,
) -> None:
    sub = await make(store)
    await store.rotate_secret(sub.id, grace_seconds=0)
    stored = await store.get(sub.id)
    assert stored is not None
    assert stored.signing_secrets(now_ms()) == [stored.secret]
    assert sub.secret not in [s.secret for s in stored.secrets]


async def test_a_second_rotation_keeps_the_first_expiry(store: SubscriberStore) -> None:
    sub = await make(store)
    first = await store.rotate_secret(sub.id, grace_seconds=3600)
    assert first is not None
    second = await store.rotate_secret(sub.id, grace_seconds=7200)
    assert second is not None
    assert [s.secret for s in second.secrets] == [second.secret, first.secret, sub.secret]
    assert second.secrets[2].expires_at == first.secrets[1].expires_at


async def test_expired_secrets_are_pruned_on_the_next_write(
    store: SubscriberStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await make(store)
    rotated = await store.rotate_secret(sub.id, grace_seconds=60)
    assert rotated is not None
    later = now_ms() + 61_000
    monkeypatch.setattr(store_module, "now_ms", lambda: later)
    updated = await store.update(sub.id, {"name": "renamed"})
    assert updated is not None
    assert updated.secrets == [SigningSecret(secret=rotated.secret)]


# --- status ---


async def test_set_status_disables_with_a_reason(store: SubscriberStore) -> None:
    sub = await make(store)
    disabled = await store.set_status(sub.id, SubscriberStatus.disabled, "410 Gone")
    assert disabled is not None
    stored = await store.get(sub.id)
    assert stored is not None
    assert (stored.status, stored.status_reason) == (SubscriberStatus.disabled, "410 Gone")


async def test_a_disabled_subscriber_is_not_entitled(store: SubscriberStore) -> None:
    sub = await make(store)
    await store.set_status(sub.id, SubscriberStatus.disabled, "410 Gone")
    assert await store.entitled_subscribers("ContactCreate", "loc1", None, None) == []


async def test_set_status_of_an_unknown_subscriber_returns_none(store: SubscriberStore) -> None:
    assert await store.set_status("sub_missing", SubscriberStatus.disabled, None) is None


# --- explain ---


async def test_explain_an_entitled_subscriber_has_no_reasons(store: SubscriberStore) -> None:
    sub = await make(store)
    verdict = await store.explain("ContactCreate", "loc1", None, sub.id)
    assert verdict is not None
    assert verdict.model_dump() == {
        "subscriber_id": sub.id,
        "event": "ContactCreate",
        "required_scope": "contacts.readonly",
        "entitled": True,
        "reasons": [],
        "delivery": {
            "rate_limit": None,
            "retry_schedule": None,
            "ordering": "none",
            "resource_key": None,
        },
    }


async def test_explain_names_a_missing_scope(store: SubscriberStore) -> None:
    sub = await make(store)
    verdict = await store.explain("CampaignStatusUpdate", None, None, sub.id)
    assert verdict is not None
    assert (verdict.entitled, verdict.reasons) == (False, ["missing scope campaigns.readonly"])


async def test_explain_names_the_event_filter(store: SubscriberStore) -> None:
    sub = await make(store, events=["ContactDelete"])
    verdict = await store.explain("ContactCreate", None, None, sub.id)
    assert verdict is not None
    assert verdict.reasons == ["event filter does not include ContactCreate"]


async def test_explain_names_another_tenant(store: SubscriberStore) -> None:
    sub = await make(store, location_ids=["loc1"])
    verdict = await store.explain("ContactCreate", "loc2", "co9", sub.id)
    assert verdict is not None
    assert verdict.reasons == ["event belongs to another tenant"]


async def test_explain_names_a_paused_subscriber(store: SubscriberStore) -> None:
    sub = await make(store)
    await store.update(sub.id, {"status": SubscriberStatus.paused})
    verdict = await store.explain("ContactCreate", None, None, sub.id)
    assert verdict is not None
    assert verdict.reasons == ["subscriber is paused"]


async def test_explain_names_a_disabled_subscriber(store: SubscriberStore) -> None:
    sub = await make(store)
    await store.set_status(sub.id, SubscriberStatus.disabled, "410 Gone")
    verdict = await store.explain("ContactCreate", None, None, sub.id)
    assert verdict is not None
    assert verdict.reasons == ["subscriber is disabled"]


async def test_explain_names_an_unknown_event(store: SubscriberStore) -> None:
    sub = await make(store)
    verdict = await store.explain("ContactUpdate", None, None, sub.id)
    assert verdict is not None
    assert (verdict.required_scope, verdict.entitled) == (None, False)
    assert verdict.reasons == ["event ContactUpdate has no scope in the catalog"]


async def test_explain_lists_every_reason_that_applies(store: SubscriberStore) -> None:
    sub = await make(store, events=["ContactDelete"], company_id="co1")
    await store.update(sub.id, {"status": SubscriberStatus.paused})
    verdict = await store.explain("InboundMessage", "loc1", "co2", sub.id)
    assert verdict is not None
    assert verdict.reasons == [
        "subscriber is paused",
        "missing scope conversations/message.readonly",
        "event filter does not include InboundMessage",
        "event belongs to another tenant",
    ]


async def test_explain_resolves_a_payload_type_alias(store: SubscriberStore) -> None:
    sub = await make(store, scopes=["conversations.readonly"])
    verdict = await store.explain("ConversationUnreadUpdate", None, None, sub.id)
    assert verdict is not None
    assert (verdict.event, verdict.required_scope) == (
        "ConversationUnreadWebhook",
        "conversations.readonly",
    )
    assert verdict.entitled


async def test_explain_of_an_unknown_subscriber_is_none(store: SubscriberStore) -> None:
    assert await store.explain("ContactCreate", None, None, "sub_missing") is None


# --- cost of routing ---


def bare_subscriber(scopes: list[str]) -> Subscriber:
    now = now_ms()
    return Subscriber(
        id=new_id("sub", now),
        name="bulk",
        url=URL,
        scopes=scopes,
        secrets=[SigningSecret(secret="whsec_" + base64.b64encode(b"s" * 32).decode())],
        created_at=now,
        updated_at=now,
    )


class CommandLog:
    """Every command a client sends (pipelines aside), by name with its arguments."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def wrap(self, send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def execute_command(*args: Any, **options: Any) -> Any:
            self.commands.append(args)
            return await send(*args, **options)

        return execute_command


async def test_routing_reads_only_the_holders_of_the_events_scope(
    store: SubscriberStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    crowd = [bare_subscriber(["contacts.readonly"]) for _ in range(9_997)]
    holders = [bare_subscriber(["campaigns.readonly"]) for _ in range(3)]
    await store.import_subscribers(crowd + holders)
    log = CommandLog()
    monkeypatch.setattr(redis, "execute_command", log.wrap(redis.execute_command))

    entitled = await store.entitled_subscribers("CampaignStatusUpdate", "loc1", None, None)

    assert sorted(s.id for s in entitled) == sorted(s.id for s in holders)
    names = [str(args[0]).upper() for args in log.commands]
    assert names == ["SMEMBERS", "HMGET"]
    fields_read = log.commands[1][2:]
    assert len(fields_read) == 3
