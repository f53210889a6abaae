"""Operator API keys in Redis, and the bearer tokens that stand for them.

A key has a name and its *current* scopes. Its one live token carries the scopes it was
*issued* with: changing a key's scopes does not change what its token may do until the token
is regenerated (the seed's rule: "after updating scopes, you must generate a new access
token"). Tokens are stored only as their SHA-256 hex digest, under `Keys.token(digest)`, whose
value names the key, the issued scopes and the subscriber the key is bound to (if any), so
authenticating, confinement included, costs one GET. A key's binding never changes.

Layout (names in `router.storage.keys`): a hash of key records by id, an id-ordered sorted set
for pagination, and one string per live token. Every change that touches a record and a token
entry runs in one MULTI/EXEC under WATCH of the records hash, so a record always names exactly
the token entry that exists for it: a deleted or regenerated key leaves no usable token behind.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from router.core.scopes import OPERATOR_SCOPES, Principal
from router.storage.keys import RouterKeys
from subscriptions.ids import new_id, now_ms

TOKEN_PREFIX = "wrk_"

# Sees a key's stored record inside the transaction that changes it; raises to refuse.
KeyCheck = Callable[["ApiKey"], None]


class ApiKey(BaseModel):
    """A stored API key record. `token_hash` is the digest of its one live token."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    scopes: list[str]
    token_scopes: list[str]
    token_hash: str
    created_at: int  # ms since the epoch
    updated_at: int
    subscriber_id: str | None = None  # the one subscriber it may see; None: every one


class _TokenEntry(BaseModel):
    key_id: str
    scopes: list[str]
    subscriber_id: str | None = None


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored (the token itself never is)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _new_token() -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    return TOKEN_PREFIX + raw.decode("ascii")


def _checked_scopes(scopes: Iterable[str]) -> list[str]:
    """`scopes` without duplicates, in the given order. Raises ValueError on an unknown or
    empty set: the HTTP models refuse those first, so this guards other callers."""
    result = list(dict.fromkeys(scopes))
    unknown = [s for s in result if s not in OPERATOR_SCOPES]
    if unknown:
        raise ValueError(f"unknown operator scope {unknown[0]!r}")
    if not result:
        raise ValueError("an API key needs at least one scope")
    return result


class Keyring:
    """Creates, reads and changes API keys; the only code that touches their Redis keys."""

    def __init__(self, redis: Redis, keys: RouterKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def principal_for_token(self, token: str) -> Principal | None:
        """The key and issued scopes behind `token`, or None if no live token matches."""
        raw = await self.redis.get(self.keys.token(token_digest(token)))
        if raw is None:
            return None
        entry = _TokenEntry.model_validate_json(raw)
        return Principal(
            key_id=entry.key_id, scopes=frozenset(entry.scopes), subscriber_id=entry.subscriber_id
        )

    async def create(
        self, name: str, scopes: Iterable[str], subscriber_id: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its token (returned here and never again), bound to `subscriber_id`
        when given (the caller checks that it exists).

        Raises ValueError if `scopes` is empty or names something not in OPERATOR_SCOPES.
        """
        checked = _checked_scopes(scopes)
        token = _new_token()
        now = now_ms()
        key = ApiKey(
            id=new_id("key", now),
            name=name,
            scopes=checked,
            token_scopes=checked,
            token_hash=token_digest(token),
            created_at=now,
            updated_at=now,
            subscriber_id=subscriber_id,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_save(pipe, key)
            pipe.zadd(self.keys.api_key_ids, {key.id: 0})
            self._queue_token(pipe, key)
            await pipe.execute()
        return key, token

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self.redis.hget(self.keys.api_keys, key_id)
        return None if raw is None else ApiKey.model_validate_json(raw)

    async def list(
        self, limit: int, cursor: str | None = None, *, subscriber_id: str | None = None
    ) -> tuple[list[ApiKey], str | None]:
        """Up to `limit` keys in id (creation) order after `cursor`, and the next cursor; with
        `subscriber_id`, only the keys bound to it.

        The cursor is the last id of the previous page (always a key of the listing, never
        one it leaves out); None when there is no further page.
        """
        items: list[ApiKey] = []
        after = cursor
        while True:
            start = b"-" if after is None else b"(" + after.encode()
            ids = await self.redis.zrangebylex(
                self.keys.api_key_ids, start, b"+", start=0, num=limit + 1
            )
            if not ids:
                return items, None
            raws = await self.redis.hmget(self.keys.api_keys, ids)
            for raw in raws:
                if raw is None:
                    continue
                key = ApiKey.model_validate_json(raw)
                if subscriber_id is None or key.subscriber_id == subscriber_id:
                    if len(items) == limit:
                        return items, items[-1].id
                    items.append(key)
            after = ids[-1].decode()

    async def update_scopes(
        self, key_id: str, scopes: Iterable[str], *, check: KeyCheck | None = None
    ) -> ApiKey | None:
        """Set the key's current scopes; None if it does not exist.

        The live token keeps the scopes it was issued with until `regenerate`.
        Raises ValueError like `create` on bad scopes. `check` sees the stored record in the
        same transaction as the change (so the record cannot change in between) and may
        raise to refuse it; the exception propagates and nothing is written.
        """
        checked = _checked_scopes(scopes)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    current = await self._watch(pipe, key_id, check)
                    if current is None:
                        return None
                    key = current.model_copy(update={"scopes": checked, "updated_at": now_ms()})
                    pipe.multi()
                    self._queue_save(pipe, key)
                    await pipe.execute()
                    return key
                except WatchError:
                    continue

    async def regenerate(
        self, key_id: str, *, check: KeyCheck | None = None
    ) -> tuple[ApiKey, str] | None:
        """A new token carrying the key's current scopes; the old token stops working in the
        same transaction. None if the key does not exist; `check` as in `update_scopes`."""
        token = _new_token()
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    current = await self._watch(pipe, key_id, check)
                    if current is None:
                        return None
                    key = current.model_copy(
                        update={
                            "token_scopes": current.scopes,
                            "token_hash": token_digest(token),
                            "updated_at": now_ms(),
                        }
                    )
                    pipe.multi()
                    pipe.delete(self.keys.token(current.token_hash))
                    self._queue_save(pipe, key)
                    self._queue_token(pipe, key)
                    await pipe.execute()
                    return key, token
                except WatchError:
                    continue

    async def delete(self, key_id: str, *, check: KeyCheck | None = None) -> bool:
        """Remove the key and its token, atomically; False if it did not exist. `check` as
        in `update_scopes`."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    current = await self._watch(pipe, key_id, check)
                    if current is None:
                        return False
                    pipe.multi()
                    pipe.hdel(self.keys.api_keys, key_id)
                    pipe.zrem(self.keys.api_key_ids, key_id)
                    pipe.delete(self.keys.token(current.token_hash))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def _watch(
        self, pipe: Pipeline, key_id: str, check: KeyCheck | None = None
    ) -> ApiKey | None:
        """Watch the records hash, then read one record (immediate mode, before MULTI) and
        pass it to `check`, which may raise to refuse the change."""
        await pipe.watch(self.keys.api_keys)
        raw = await pipe.hget(self.keys.api_keys, key_id)
        if raw is None:
            await pipe.unwatch()
            return None
        key = ApiKey.model_validate_json(raw)
        if check is not None:
            check(key)
        return key

    def _queue_save(self, pipe: Pipeline, key: ApiKey) -> None:
        pipe.hset(self.keys.api_keys, key.id, key.model_dump_json())

    def _queue_token(self, pipe: Pipeline, key: ApiKey) -> None:
        entry = _TokenEntry(key_id=key.id, scopes=key.token_scopes, subscriber_id=key.subscriber_id)
        pipe.set(self.keys.token(key.token_hash), entry.model_dump_json())
