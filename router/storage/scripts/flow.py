"""Per-subscriber flow: its rate limit (GCRA, on Redis's clock, so every router process and
partition shares one budget) and the order of deliveries about one resource."""

from __future__ import annotations

from router.core.records import WorkItem
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: the subscriber's rate key. ARGV: interval between requests (µs), tolerance (µs: how far
# ahead of the schedule a burst may run). Returns 0 if a request may go now (and books it),
# else the µs to wait. Generic cell rate algorithm: one value per subscriber, on Redis's clock.
THROTTLE = Script(
    "throttle",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tolerance
if now < allowed_at then return allowed_at - now end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX',
  math.ceil((tat + interval - now) / 1000) + 1000)
return 0
""",
)

# KEYS: the resource's order set. ARGV: delivery id, retention (s). Enters the delivery (once)
# and returns the delivery now first, the one that may be attempted.
ENTER = Script(
    "order_enter",
    """
redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, 0)[1]
""",
)

# KEYS: the resource's order set. ARGV: delivery id. Removes the delivery (it is finished) and
# returns the one now first, or nil.
LEAVE = Script(
    "order_leave",
    """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, 0)[1]
""",
)

# KEYS: ready stream, the subscriber's held set, the partition's held-subscribers set, the
# partition's held-keys hash. ARGV: group, entry id, work member, subscriber id, now (ms), the
# order set it waits in. Sets the work aside until it is first in its resource's order,
# acknowledging its ready entry in the same step.
HOLD = Script(
    "order_hold",
    """
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
""",
)

# KEYS: the subscriber's held set, the partition's held-subscribers set, held-keys hash, ready
# stream. ARGV: subscriber id, work member. Sends the member back to the ready stream if it is
# held; returns 1 if it was.
WAKE = Script(
    "order_wake",
    """
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[4], '*', 'm', ARGV[2])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
""",
)


def throttle_command(key: str, *, per_second: float, burst: int) -> Command:
    interval = max(1, round(1_000_000 / per_second))
    return THROTTLE.command([key], [interval, (burst - 1) * interval])


def enter_command(order_key: str, delivery_id: str, *, retention: int) -> Command:
    return ENTER.command([order_key], [delivery_id, retention])


def leave_command(order_key: str, delivery_id: str) -> Command:
    return LEAVE.command([order_key], [delivery_id])


def hold_command(
    keys: RouterKeys, partition: int, item: WorkItem, order_key: str, *, group: str, now: int
) -> Command:
    """The call holding `item` (of `partition`) until it is first in `order_key`."""
    return HOLD.command(
        [
            keys.ready_stream(partition),
            keys.order_held(item.subscriber_id, partition),
            keys.order_held_subscribers(partition),
            keys.order_held_keys(partition),
        ],
        [group, item.entry_id, item.member, item.subscriber_id, now, order_key],
    )


def wake_command(keys: RouterKeys, partition: int, subscriber_id: str, member: str) -> Command:
    """The call sending a held member of `partition` back to its ready stream."""
    return WAKE.command(
        [
            keys.order_held(subscriber_id, partition),
            keys.order_held_subscribers(partition),
            keys.order_held_keys(partition),
            keys.ready_stream(partition),
        ],
        [subscriber_id, member],
    )
