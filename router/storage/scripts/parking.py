"""Parking: work set aside, out of the shared ready stream, until its subscriber has room
(its concurrency bound reached, or its breaker open), and released back later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.core.records import WorkItem
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script
from subscriptions.ids import id_time

# KEYS: ready stream, the parked-subscribers set, then per item its subscriber's parked set.
# ARGV: group, then per item (entry id, work member, subscriber id, its event's time in ms).
# Scored by the event's time, parked work comes back oldest first, and work parked again
# after a release keeps its place instead of going to the back.
PARK = Script(
    "park",
    """
local entries = {}
for i = 1, #KEYS - 2 do
  local a = 4 * i - 2
  redis.call('ZADD', KEYS[2 + i], ARGV[a + 3], ARGV[a + 1])
  redis.call('SADD', KEYS[2], ARGV[a + 2])
  entries[i] = ARGV[a]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
""",
)

# KEYS: the subscriber's parked set, the parked-subscribers set, ready stream.
# ARGV: subscriber id, how many to release. Returns how many were released.
RELEASE = Script(
    "release_parked",
    """
local members = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
for i = 1, #members, 2 do redis.call('XADD', KEYS[3], '*', 'm', members[i]) end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return #members / 2
""",
)


def park_command(
    keys: RouterKeys, partition: int, items: Sequence[WorkItem], *, group: str
) -> Command:
    """The call parking `items`, all of `partition` (acknowledging their ready entries in the
    same step)."""
    all_keys = [keys.ready_stream(partition), keys.parked_subscribers(partition)]
    args: list[Any] = [group]
    for item in items:
        all_keys.append(keys.parked(item.subscriber_id, partition))
        args += [item.entry_id, item.member, item.subscriber_id, id_time(item.event_id[4:])]
    return PARK.command(all_keys, args)


def release_command(keys: RouterKeys, subscriber_id: str, partition: int, count: int) -> Command:
    """The call moving up to `count` of a subscriber's oldest parked work in `partition` back
    to its ready stream; its reply is how many moved."""
    all_keys = [
        keys.parked(subscriber_id, partition),
        keys.parked_subscribers(partition),
        keys.ready_stream(partition),
    ]
    return RELEASE.command(all_keys, [subscriber_id, count])
