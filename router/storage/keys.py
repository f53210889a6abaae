"""Every Redis key the router uses (the subscriber registry's own keys are in
`subscriptions.keys`): no key is spelled anywhere but here.

The router's work is split over `ROUTER_PARTITIONS` partitions, each a hash tag: an event,
its deliveries and every queue entry for them live in one partition, so every Lua script
touches a single hash slot while a Redis Cluster spreads the partitions over its masters.
An event id carries its partition (`subscriptions.ids.id_mark`), and so does every delivery
id made from it. A subscriber's breaker lives in the partition its id hashes to. Keys that
belong to no event (API keys, tokens, process heartbeats) share the registry's tag.

With one partition every key shares the tag `{<prefix>}`. With more, partition p's tag is
`{<prefix>:p:<salt>}`, the salt chosen so the tag's slot falls in the p-th place of a
bit-reversed spread of the 16,384 slots: any first N partitions are spread evenly over the
slot space (16 land 6/5/5 on the three equal slot ranges of a 3-master cluster), and a
partition's tag does not depend on how many there are. See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TypeVar

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from subscriptions.ids import id_mark
from subscriptions.keys import tag

_SPREAD_BITS = 10  # 1,024 places on the slot circle, one per possible partition
T = TypeVar("T")


def _reversed_bits(value: int, width: int) -> int:
    return int(f"{value:0{width}b}"[::-1], 2)


@lru_cache(maxsize=4096)
def partition_tag(prefix: str, partition: int, partitions: int) -> str:
    """The hash tag of `partition` when the work is split `partitions` ways."""
    if partitions == 1:
        return tag(prefix)
    width = REDIS_CLUSTER_HASH_SLOTS >> _SPREAD_BITS
    low = _reversed_bits(partition, _SPREAD_BITS) * width
    salt = 0
    while not low <= key_slot(f"{prefix}:{partition}:{salt}".encode()) < low + width:
        salt += 1
    return "{" + f"{prefix}:{partition}:{salt}" + "}"


def _mark(id_body: str) -> int:
    # An id that is not one of ours (an operator's typo, a hostile path) names partition 0,
    # where it is simply not found.
    try:
        return id_mark(id_body)
    except ValueError:
        return 0


def event_partition(event_id: str) -> int:
    """The partition an event (`evt_…`) was stored in."""
    return _mark(event_id[4:30])


def delivery_partition(delivery_id: str) -> int:
    """The partition a delivery (`dlv_<event's id><subscriber suffix>`) lives in."""
    return _mark(delivery_id[4:30])


def by_partition(items: Iterable[T], partition: Callable[[T], int]) -> dict[int, list[T]]:
    """`items` grouped by partition, each group in the given order."""
    groups: dict[int, list[T]] = defaultdict(list)
    for item in items:
        groups[partition(item)].append(item)
    return groups


class RouterKeys:
    """Key names under one prefix (`ROUTER_KEY_PREFIX`, `wr` by default)."""

    def __init__(self, prefix: str = "wr", partitions: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self._g = tag(prefix)

    def _p(self, partition: int) -> str:
        return partition_tag(self.prefix, partition, self.partitions)

    def _event_tag(self, event_id: str) -> str:
        return self._g if self.partitions == 1 else self._p(event_partition(event_id))

    def _delivery_tag(self, delivery_id: str) -> str:
        return self._g if self.partitions == 1 else self._p(delivery_partition(delivery_id))

    def partition_for(self, identity: str) -> int:
        """The partition an event with this dedupe identity goes to: the same identity always
        lands in the same partition, so its duplicates are found there."""
        return zlib.crc32(identity.encode("utf-8", "surrogatepass")) % self.partitions

    def breaker_partition(self, subscriber_id: str) -> int:
        return zlib.crc32(subscriber_id.encode()) % self.partitions

    def all_partitions(self) -> range:
        return range(self.partitions)

    # --- operator API keys (router.storage.keyring) and processes ---
    @property
    def api_keys(self) -> str:
        """Hash: api key id -> key JSON (name, current scopes; never a token)."""
        return f"{self._g}:api-keys"

    @property
    def api_key_ids(self) -> str:
        """Sorted set (all scores 0): api key ids, for cursor pagination."""
        return f"{self._g}:api-keys:ids"

    def token(self, token_hash: str) -> str:
        """String: JSON of the key id and the scopes this token was issued with."""
        return f"{self._g}:token:{token_hash}"

    def consumer_heartbeat(self, consumer: str) -> str:
        """String with TTL: present while the process consuming as `consumer` is alive."""
        return f"{self._g}:consumer:{consumer}"

    # --- events (ingest, router.storage.ledger) ---
    def events_stream(self, partition: int) -> str:
        """Stream of accepted events awaiting dispatch (consumer group `dispatch`)."""
        return f"{self._p(partition)}:events"

    def event(self, event_id: str) -> str:
        """Hash: the stored event (raw body and routing fields)."""
        return f"{self._event_tag(event_id)}:event:{event_id}"

    def event_index(self, partition: int) -> str:
        """Sorted set (all scores 0): the partition's stored event ids, in id (= time) order."""
        return f"{self._p(partition)}:event-ids"

    def event_deliveries(self, event_id: str) -> str:
        """Sorted set (all scores 0): the delivery ids made for one event."""
        return f"{self._event_tag(event_id)}:event:{event_id}:deliveries"

    def dedupe(self, partition: int, webhook_id: str) -> str:
        """String: the event id first accepted with this webhook id (expires with the window)."""
        digest = hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self._p(partition)}:dedupe:{digest}"

    def body_seen(self, partition: int, digest: str) -> str:
        """String: the event id first accepted with this body (sha256 hex; expires with the
        dedupe window)."""
        return f"{self._p(partition)}:seen:{digest[:32]}"

    def backfill_cursor(self, subscriber_id: str, window: str) -> str:
        """String with TTL: how far a backfill of one subscriber over one window (a digest of
        its terms) has got, so a call repeated after a crash goes on from there."""
        digest = hashlib.sha256(window.encode()).hexdigest()[:32]
        return f"{self._g}:backfill:{subscriber_id}:{digest}"

    def stats(self, partition: int) -> str:
        """Hash of counters that must survive restarts (unroutable events, ...)."""
        return f"{self._p(partition)}:stats"

    # --- deliveries (router.storage.ledger and .history) ---
    def delivery(self, delivery_id: str) -> str:
        """Hash: one delivery's state."""
        return f"{self._delivery_tag(delivery_id)}:delivery:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        """List: JSON of every attempt of one delivery, oldest first."""
        return f"{self._delivery_tag(delivery_id)}:delivery:{delivery_id}:attempts"

    def deliveries(self, partition: int) -> str:
        """Sorted set (all scores 0): the partition's delivery ids, in id (= event time) order."""
        return f"{self._p(partition)}:deliveries"

    def subscriber_deliveries(self, subscriber_id: str, partition: int) -> str:
        """Sorted set (all scores 0): one subscriber's delivery ids in a partition, in id order."""
        return f"{self._p(partition)}:subscriber:{subscriber_id}:deliveries"

    def ready_stream(self, partition: int) -> str:
        """Stream of deliveries ready for an attempt (consumer group `deliver`)."""
        return f"{self._p(partition)}:ready"

    def retry_schedule(self, partition: int) -> str:
        """Sorted set: work members waiting for a later attempt, scored by due time (ms)."""
        return f"{self._p(partition)}:retry"

    def dead(self, partition: int) -> str:
        """Sorted set (all scores 0): dead delivery ids in id order."""
        return f"{self._p(partition)}:dead"

    def parked(self, subscriber_id: str, partition: int) -> str:
        """Sorted set: work members waiting for this subscriber to have room (its concurrency
        bound reached, or its breaker open), scored by when they were parked (ms)."""
        return f"{self._p(partition)}:subscriber:{subscriber_id}:parked"

    def parked_subscribers(self, partition: int) -> str:
        """Set: subscribers with parked work in the partition."""
        return f"{self._p(partition)}:parked"

    # --- breakers: in the partition the subscriber's id hashes to ---
    def breaker(self, subscriber_id: str) -> str:
        """Hash: a subscriber's consecutive failures and breaker state."""
        return f"{self._p(self.breaker_partition(subscriber_id))}:breaker:{subscriber_id}"

    def open_breakers(self, partition: int) -> str:
        """Set: subscribers of this breaker partition whose breaker is open."""
        return f"{self._p(partition)}:breakers:open"

    def probe_lock(self, subscriber_id: str) -> str:
        """String with TTL: held while one probe attempt to an open-breaker subscriber runs."""
        return f"{self._p(self.breaker_partition(subscriber_id))}:breaker:{subscriber_id}:probe"

    # --- per-subscriber flow: in the subscriber's own partition, like its breaker ---
    def rate(self, subscriber_id: str) -> str:
        """String with TTL: the subscriber's rate limit's theoretical arrival time (GCRA, ms)."""
        return f"{self._p(self.breaker_partition(subscriber_id))}:rate:{subscriber_id}"

    def order(self, subscriber_id: str, resource: str) -> str:
        """Sorted set (all scores 0): a resource's pending deliveries to an ordered subscriber,
        in id (= event time) order; the first is the one that may be attempted."""
        digest = hashlib.sha256(resource.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        tag = self._p(self.breaker_partition(subscriber_id))
        return f"{tag}:order:{subscriber_id}:{digest}"

    def order_held(self, subscriber_id: str, partition: int) -> str:
        """Sorted set: work members of an ordered subscriber set aside until they are first in
        their resource's order, scored by when (ms)."""
        return f"{self._p(partition)}:subscriber:{subscriber_id}:order-held"

    def order_held_keys(self, partition: int) -> str:
        """Hash: held work member -> the order set it waits in."""
        return f"{self._p(partition)}:order-held:keys"

    def order_held_subscribers(self, partition: int) -> str:
        """Set: ordered subscribers with work set aside in the partition."""
        return f"{self._p(partition)}:order-held"
