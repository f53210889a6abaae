"""Fan-out: an event's deliveries created and queued, with its dispatch acknowledged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.core.records import delivery_id_for, work_member
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: events stream, ready stream, deliveries index, event's deliveries, then per
# subscriber (delivery hash, subscriber's deliveries). ARGV: group, entry id ('' = none),
# event id, event name, now, retention, oldest id kept, then per subscriber (delivery id,
# subscriber id, work member). Returns how many deliveries were created.
SCRIPT = Script(
    "create_deliveries",
    """
local n = (#ARGV - 7) / 3
local created = 0
for i = 1, n do
  local dlv, sub, member = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  local dkey, skey = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  if redis.call('EXISTS', dkey) == 0 then
    redis.call('HSET', dkey, 'event_id', ARGV[3], 'subscriber_id', sub, 'event', ARGV[4],
      'status', 'pending', 'attempts', 0, 'schedule_index', 0,
      'created_at', ARGV[5], 'updated_at', ARGV[5])
    redis.call('EXPIRE', dkey, ARGV[6])
    redis.call('ZADD', KEYS[3], 0, dlv)
    redis.call('ZADD', KEYS[4], 0, dlv)
    redis.call('ZADD', skey, 0, dlv)
    redis.call('ZREMRANGEBYLEX', skey, '-', '(' .. ARGV[7])
    redis.call('EXPIRE', skey, ARGV[6])
    redis.call('XADD', KEYS[2], '*', 'm', member)
    created = created + 1
  end
end
redis.call('ZREMRANGEBYLEX', KEYS[3], '-', '(' .. ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[6])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return created
""",
)


def create_deliveries_command(
    keys: RouterKeys,
    partition: int,
    *,
    group: str,
    entry_id: str,
    event_id: str,
    event: str,
    subscriber_ids: Sequence[str],
    now: int,
    retention: int,
    oldest_kept: str,
) -> Command:
    """The call creating one pending delivery per subscriber that has none yet for the event
    (of `partition`), each queued as ready, and acknowledging the event's dispatch entry
    (`entry_id`, '' for none) — atomically. Its reply is the number created."""
    all_keys = [
        keys.events_stream(partition),
        keys.ready_stream(partition),
        keys.deliveries(partition),
        keys.event_deliveries(event_id),
    ]
    args: list[Any] = [group, entry_id, event_id, event, now, retention, oldest_kept]
    for sub in subscriber_ids:
        dlv = delivery_id_for(event_id, sub)
        all_keys += [keys.delivery(dlv), keys.subscriber_deliveries(sub, partition)]
        args += [dlv, sub, work_member(dlv, sub, event_id)]
    return SCRIPT.command(all_keys, args)
