"""Every Redis key the router uses (the subscriber registry's own keys are in
`subscriptions.keys`): no key is spelled anywhere but here.

All keys of one deployment share the hash tag `{<prefix>}`, so every multi-key transaction and
Lua script touches a single hash slot. See docs/architecture.md for the layout as a whole.
"""

from __future__ import annotations

import hashlib

from subscriptions.keys import tag


class RouterKeys:
    """Key names under one prefix (`ROUTER_KEY_PREFIX`, `wr` by default)."""

    def __init__(self, prefix: str = "wr") -> None:
        self.prefix = prefix
        self._p = tag(prefix)

    # --- operator API keys (router.storage.keyring) ---
    @property
    def api_keys(self) -> str:
        """Hash: api key id -> key JSON (name, current scopes; never a token)."""
        return f"{self._p}:api-keys"

    @property
    def api_key_ids(self) -> str:
        """Sorted set (all scores 0): api key ids, for cursor pagination."""
        return f"{self._p}:api-keys:ids"

    def token(self, token_hash: str) -> str:
        """String: JSON of the key id and the scopes this token was issued with."""
        return f"{self._p}:token:{token_hash}"

    # --- events (ingest, router.storage.ledger) ---
    @property
    def events_stream(self) -> str:
        """Stream of accepted events awaiting dispatch (consumer group `dispatch`)."""
        return f"{self._p}:events"

    def event(self, event_id: str) -> str:
        """Hash: the stored event (raw body and routing fields)."""
        return f"{self._p}:event:{event_id}"

    def event_deliveries(self, event_id: str) -> str:
        """Sorted set (all scores 0): the delivery ids made for one event."""
        return f"{self._p}:event:{event_id}:deliveries"

    def dedupe(self, webhook_id: str) -> str:
        """String: the event id first accepted with this webhook id (expires with the window)."""
        digest = hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self._p}:dedupe:{digest}"

    def body_seen(self, digest: str) -> str:
        """String: the event id first accepted with this body (sha256 hex; expires with the
        dedupe window)."""
        return f"{self._p}:seen:{digest[:32]}"

    @property
    def stats(self) -> str:
        """Hash of counters that must survive restarts (unroutable events, ...)."""
        return f"{self._p}:stats"

    # --- deliveries (router.storage.ledger and .history) ---
    def delivery(self, delivery_id: str) -> str:
        """Hash: one delivery's state."""
        return f"{self._p}:delivery:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        """List: JSON of every attempt of one delivery, oldest first."""
        return f"{self._p}:delivery:{delivery_id}:attempts"

    @property
    def deliveries(self) -> str:
        """Sorted set (all scores 0): every delivery id, in id (= event time) order."""
        return f"{self._p}:deliveries"

    def subscriber_deliveries(self, subscriber_id: str) -> str:
        """Sorted set (all scores 0): one subscriber's delivery ids, in id order."""
        return f"{self._p}:subscriber:{subscriber_id}:deliveries"

    @property
    def ready_stream(self) -> str:
        """Stream of deliveries ready for an attempt (consumer group `deliver`)."""
        return f"{self._p}:ready"

    @property
    def retry_schedule(self) -> str:
        """Sorted set: delivery ids waiting for a later attempt, scored by due time (ms)."""
        return f"{self._p}:retry"

    @property
    def dead(self) -> str:
        """Sorted set (all scores 0): dead delivery ids in id order."""
        return f"{self._p}:dead"

    def consumer_heartbeat(self, consumer: str) -> str:
        """String with TTL: present while the process consuming as `consumer` is alive."""
        return f"{self._p}:consumer:{consumer}"

    def parked(self, subscriber_id: str) -> str:
        """Sorted set: work members waiting for this subscriber to have room (its concurrency
        bound reached, or its breaker open), scored by when they were parked (ms)."""
        return f"{self._p}:subscriber:{subscriber_id}:parked"

    @property
    def parked_subscribers(self) -> str:
        """Set: subscribers with parked work."""
        return f"{self._p}:parked"

    def breaker(self, subscriber_id: str) -> str:
        """Hash: a subscriber's consecutive failures and breaker state."""
        return f"{self._p}:breaker:{subscriber_id}"

    @property
    def open_breakers(self) -> str:
        """Set: subscribers whose breaker is open."""
        return f"{self._p}:breakers:open"

    def probe_lock(self, subscriber_id: str) -> str:
        """String with TTL: held while one probe attempt to an open-breaker subscriber runs."""
        return f"{self._p}:breaker:{subscriber_id}:probe"
