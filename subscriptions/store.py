"""Subscribers and their grants in Redis, indexed by scope.

Layout (names in `subscriptions.keys`): one hash of subscriber JSON by id, one set of holder
ids per scope, an id-ordered sorted set for pagination, and a version counter. Every change
to a subscriber rewrites its JSON and its scope-set memberships in one Lua script (a bulk
import, in one MULTI transaction), so the index can never disagree with the record.
Finding who is entitled to an event reads only the holders of the event's scope.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis

from subscriptions.catalog import Catalog
from subscriptions.explain import Verdict
from subscriptions.explain import explain as explain_verdict
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import SubscriberKeys
from subscriptions.models import (
    Ordering,
    RateLimit,
    SigningSecret,
    Subscriber,
    SubscriberStatus,
    generate_secret,
)
from subscriptions.routing import Audience, Payload, standing_refusals

# KEYS: subscribers hash, ids zset, version counter, then the scope sets to leave, then the
# scope sets to join. ARGV: id, new JSON ("" deletes), expected version ("" = any),
# number of scope sets to leave. Returns 1, or 0 if the id is missing, or -1 on a stale version.
_WRITE_SUBSCRIBER = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  if not current then return 0 end
  if tostring(cjson.decode(current)['version']) ~= ARGV[3] then return -1 end
end
local n_leave = tonumber(ARGV[4])
for i = 4, 3 + n_leave do redis.call('SREM', KEYS[i], ARGV[1]) end
for i = 4 + n_leave, #KEYS do redis.call('SADD', KEYS[i], ARGV[1]) end
if ARGV[2] == '' then
  if not current then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
end
redis.call('INCR', KEYS[3])
return 1
"""


class StaleVersion(Exception):
    """The subscriber changed since the version the caller read (If-Match failed)."""


class Page(NamedTuple):
    """One page of a listing; `next_cursor` is None on the last page."""

    items: list[Subscriber]
    next_cursor: str | None


# Fields an update may replace; everything else (id, secrets, version, times) the store owns.
UPDATABLE_FIELDS = frozenset(
    {
        "name",
        "url",
        "scopes",
        "events",
        "location_ids",
        "company_id",
        "status",
        "status_reason",
        "rate_limit",
        "retry_schedule",
        "ordering",
        "filter",
    }
)
# How often a read-modify-write without If-Match is retried when it loses a race.
_WRITE_ATTEMPTS = 5

# Sees the would-be result of a change before it is written; raises to refuse it.
Check = Callable[[Subscriber], None]
# The fields to change, given the stored subscriber and the time of the write (ms).
Changes = Callable[[Subscriber, int], Mapping[str, Any]]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _normalised(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Scopes and filters without duplicates; an empty filter or binding means none."""
    out = dict(fields)
    if "filter" in out and not out["filter"]:
        out["filter"] = None
    if "scopes" in out:
        out["scopes"] = _unique(out["scopes"])
    for name in ("events", "location_ids"):
        if name in out and out[name] is not None:
            out[name] = _unique(out[name]) or None
    return out


def _live_secrets(secrets: Sequence[SigningSecret], now: int) -> list[SigningSecret]:
    """The secrets that still sign at `now` (the current one always does)."""
    return [s for s in secrets if s.expires_at is None or s.expires_at > now]


class SubscriberStore:
    """Reads and writes subscribers; the only code that touches their keys."""

    def __init__(self, redis: Redis, keys: SubscriberKeys, catalog: Catalog) -> None:
        self.redis = redis
        self.keys = keys
        self.catalog = catalog
        self._write_script = redis.register_script(_WRITE_SUBSCRIBER)

    async def version(self) -> bytes | None:
        """A value that changes with every subscriber write (None before the first)."""
        return await self.redis.get(self.keys.subscribers_version)

    async def get(self, subscriber_id: str) -> Subscriber | None:
        raw = await self.redis.hget(self.keys.subscribers, subscriber_id)
        return None if raw is None else Subscriber.model_validate_json(raw)

    async def get_many(self, subscriber_ids: Sequence[str]) -> list[Subscriber]:
        """The subscribers that exist among `subscriber_ids`, in that order."""
        if not subscriber_ids:
            return []
        raws = await self.redis.hmget(self.keys.subscribers, list(subscriber_ids))
        return [Subscriber.model_validate_json(raw) for raw in raws if raw is not None]

    async def create(
        self,
        *,
        name: str,
        url: str,
        scopes: Sequence[str],
        events: Sequence[str] | None = None,
        location_ids: Sequence[str] | None = None,
        company_id: str | None = None,
        secret: str | None = None,
        rate_limit: RateLimit | None = None,
        retry_schedule: Sequence[float] | None = None,
        ordering: Ordering = "none",
        filter: Mapping[str, Any] | None = None,
    ) -> Subscriber:
        """Register a new, active subscriber and index its scopes.

        `secret` is used as given (callers validate it); when absent a new one is generated.
        Duplicate scopes and filter entries are dropped, and an empty `events`,
        `location_ids` or `filter` is stored as null (no filter, no binding). Raises
        `subscriptions.filters.FilterError` (a ValueError) for a filter that breaks the grammar.
        """
        now = now_ms()
        fields = _normalised(
            {
                "name": name,
                "url": url,
                "scopes": list(scopes),
                "events": None if events is None else list(events),
                "location_ids": None if location_ids is None else list(location_ids),
                "filter": filter,
            }
        )
        subscriber = Subscriber(
            id=new_id("sub", now),
            company_id=company_id,
            secrets=[SigningSecret(secret=secret or generate_secret())],
            created_at=now,
            updated_at=now,
            rate_limit=rate_limit,
            retry_schedule=None if retry_schedule is None else list(retry_schedule),
            ordering=ordering,
            **fields,
        )
        await self.save(subscriber)
        return subscriber

    async def import_subscribers(self, subscribers: Sequence[Subscriber]) -> None:
        """Write many new subscribers and their index entries in one transaction.

        For bulk registration (migrations, benchmarks): one round trip whatever the count.
        The subscribers must be new: an id already stored would keep its old index entries.
        """
        if not subscribers:
            return
        by_scope: dict[str, list[str]] = {}
        for sub in subscribers:
            for scope in set(sub.scopes):
                by_scope.setdefault(scope, []).append(sub.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.subscribers,
                mapping={sub.id: sub.model_dump_json() for sub in subscribers},
            )
            pipe.zadd(self.keys.subscriber_ids, {sub.id: 0 for sub in subscribers})
            for scope, ids in by_scope.items():
                pipe.sadd(self.keys.scope_holders(scope), *ids)
            pipe.incr(self.keys.subscribers_version)
            await pipe.execute()

    async def list_page(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        scope: str | None = None,
        status: SubscriberStatus | None = None,
    ) -> Page:
        """Subscribers in id order after `cursor` (an id from a previous page), at most `limit`.

        With `scope`, only its holders are read (from the scope index, not the whole
        registry); with `status`, only subscribers in that status are returned.
        """
        items: list[Subscriber] = []
        batch = limit + 1 if status is None else max(limit + 1, 100)
        batches = (
            self._holder_batches(scope, cursor, batch)
            if scope is not None
            else self._id_batches(cursor, batch)
        )
        async for ids in batches:
            for sub in await self.get_many(ids):
                if status is None or sub.status is status:
                    items.append(sub)
            if len(items) > limit:
                return Page(items[:limit], items[limit - 1].id)
        return Page(items, None)

    async def _id_batches(self, cursor: str | None, size: int) -> AsyncIterator[list[str]]:
        low = "-" if cursor is None else "(" + cursor
        while True:
            raw = await self.redis.zrangebylex(
                self.keys.subscriber_ids, low, "+", start=0, num=size
            )
            ids = [m.decode() for m in raw]
            if ids:
                yield ids
            if len(ids) < size:
                return
            low = "(" + ids[-1]

    async def _holder_batches(
        self, scope: str, cursor: str | None, size: int
    ) -> AsyncIterator[list[str]]:
        holders = await self.holders_of(scope)
        start = 0 if cursor is None else bisect.bisect_right(holders, cursor)
        for i in range(start, len(holders), size):
            yield holders[i : i + size]

    async def update(
        self,
        subscriber_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        check: Check | None = None,
    ) -> Subscriber | None:
        """Replace the given fields (see `UPDATABLE_FIELDS`), re-indexing scopes atomically.

        Returns the updated subscriber, or None if there is no such subscriber. Raises
        StaleVersion if `expected_version` is given and is not the stored version. `check`
        sees the would-be result before it is written and may raise to refuse it.
        Setting `status` without `status_reason` clears the reason.
        """
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
        fields = dict(changes)
        if "status" in fields:
            fields.setdefault("status_reason", None)
        return await self._modify(
            subscriber_id, lambda _sub, _now: fields, expected_version=expected_version, check=check
        )

    async def change_grants(
        self,
        subscriber_id: str,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        *,
        check: Check | None = None,
    ) -> Subscriber | None:
        """Grant the scopes in `add` and revoke those in `remove`, atomically with the index;
        a scope in both ends up revoked, and revoking every scope is allowed.

        Returns the updated subscriber or None if unknown; `check` as in `update`.
        """
        revoked = set(remove)

        def grants(current: Subscriber, _now: int) -> dict[str, Any]:
            kept = [s for s in current.scopes if s not in revoked]
            return {"scopes": kept + [s for s in add if s not in revoked]}

        return await self._modify(subscriber_id, grants, check=check)

    async def rotate_secret(
        self, subscriber_id: str, *, grace_seconds: int, secret: str | None = None
    ) -> Subscriber | None:
        """Make a new secret (or `secret`) current; older ones keep signing for the grace.

        A secret that already had an expiry keeps it. Returns the updated subscriber, whose
        `secret` is the new one, or None if unknown.
        """

        def rotated(current: Subscriber, now: int) -> dict[str, Any]:
            expires = now + grace_seconds * 1000
            older = [
                s
                if s.expires_at is not None
                else SigningSecret(secret=s.secret, expires_at=expires)
                for s in current.secrets
            ]
            return {"secrets": [SigningSecret(secret=secret or generate_secret()), *older]}

        return await self._modify(subscriber_id, rotated)

    async def set_status(
        self, subscriber_id: str, status: SubscriberStatus, reason: str | None
    ) -> Subscriber | None:
        """Set the subscriber's status and its reason (the router disables on 410 Gone).

        Returns the updated subscriber, or None if it no longer exists.
        """
        return await self._modify(
            subscriber_id, lambda _sub, _now: {"status": status, "status_reason": reason}
        )

    async def remove(
        self, subscriber_id: str, *, expected_version: int | None = None
    ) -> Subscriber | None:
        """Delete the subscriber and its index entries; returns what was deleted, or None.

        Raises StaleVersion if `expected_version` is given and is not the stored version.
        """
        for _ in range(_WRITE_ATTEMPTS):
            current = await self.get(subscriber_id)
            if current is None:
                return None
            if expected_version is not None and current.version != expected_version:
                raise StaleVersion(subscriber_id)
            try:
                # The version check makes the scope sets we leave exactly the stored ones.
                deleted = await self._write(
                    subscriber_id, "", current.version, sorted(set(current.scopes)), []
                )
            except StaleVersion:
                if expected_version is not None:
                    raise
                continue
            return current if deleted else None
        raise StaleVersion(subscriber_id)

    async def explain(
        self,
        event: str,
        location_id: str | None,
        company_id: str | None,
        subscriber_id: str,
        payload: Payload = None,
    ) -> Verdict | None:
        """Whether the subscriber is entitled to `event` of this tenant (and payload, if
        given), with every reason it is not; None if there is no such subscriber."""
        subscriber = await self.get(subscriber_id)
        if subscriber is None:
            return None
        return explain_verdict(subscriber, event, location_id, company_id, self.catalog, payload)

    async def _modify(
        self,
        subscriber_id: str,
        changes_for: Changes,
        *,
        expected_version: int | None = None,
        check: Check | None = None,
    ) -> Subscriber | None:
        """Read, change and write back under the version check, retrying a lost race unless
        the caller pinned `expected_version`. Expired secrets are pruned on every write."""
        for _ in range(_WRITE_ATTEMPTS):
            current = await self.get(subscriber_id)
            if current is None:
                return None
            if expected_version is not None and current.version != expected_version:
                raise StaleVersion(subscriber_id)
            now = now_ms()
            data = current.model_dump()
            data.update(_normalised(changes_for(current, now)))
            data["secrets"] = _live_secrets(
                [SigningSecret.model_validate(s) for s in data["secrets"]], now
            )
            data.update(version=current.version + 1, updated_at=now)
            updated = Subscriber.model_validate(data)
            if check is not None:
                check(updated)
            try:
                saved = await self.save(updated, previous=current, expected_version=current.version)
            except StaleVersion:
                if expected_version is not None:
                    raise
                continue
            return updated if saved else None
        raise StaleVersion(subscriber_id)

    async def save(
        self,
        subscriber: Subscriber,
        *,
        previous: Subscriber | None = None,
        expected_version: int | None = None,
    ) -> bool:
        """Write `subscriber` and move its scope-index memberships from `previous`'s, atomically.

        Returns False if `expected_version` is given and the subscriber no longer exists.
        Raises StaleVersion if it exists with another version.
        """
        old = set(previous.scopes) if previous else set()
        new = set(subscriber.scopes)
        leave = sorted(old - new)
        join = sorted(new - old) if previous else sorted(new)
        return await self._write(
            subscriber.id, subscriber.model_dump_json(), expected_version, leave, join
        )

    async def _write(
        self,
        subscriber_id: str,
        payload: str,
        expected_version: int | None,
        leave: list[str],
        join: list[str],
    ) -> bool:
        keys = [self.keys.subscribers, self.keys.subscriber_ids, self.keys.subscribers_version]
        keys += [self.keys.scope_holders(s) for s in leave]
        keys += [self.keys.scope_holders(s) for s in join]
        expected = "" if expected_version is None else str(expected_version)
        result = await self._write_script(
            keys=keys, args=[subscriber_id, payload, expected, len(leave)]
        )
        if result == -1:
            raise StaleVersion(subscriber_id)
        return result == 1

    async def holders_of(self, scope: str) -> list[str]:
        """Ids of the subscribers holding `scope`."""
        return sorted(m.decode() for m in await self.redis.smembers(self.keys.scope_holders(scope)))

    async def audience(
        self, event: str, location_id: str | None, company_id: str | None
    ) -> Audience:
        """The subscribers the routing rule (`subscriptions.routing`) entitles to this event
        of this tenant, in id order, before their payload filters: `Audience.entitled(payload)`
        applies those.

        Reads only the holders of the event's scope: an unknown event costs no Redis call,
        and non-holders are never read.
        """
        scope = self.catalog.required_scope(event)
        if scope is None:
            return Audience([])
        candidates = await self.get_many(await self.holders_of(scope))
        return Audience(
            [
                s
                for s in candidates
                if not standing_refusals(s, event, location_id, company_id, self.catalog)
            ]
        )

    async def entitled_subscribers(
        self, event: str, location_id: str | None, company_id: str | None, payload: Payload
    ) -> list[Subscriber]:
        """The subscribers the routing rule entitles to this event of this tenant with this
        payload (its parsed JSON body), in id order."""
        return (await self.audience(event, location_id, company_id)).entitled(payload)
