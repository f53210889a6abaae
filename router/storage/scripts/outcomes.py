"""Outcomes: what handling a delivery came to, recorded in one call per partition for a batch
of them (concurrent attempts share it, see `router.storage.batching`), each atomically with
its ready-stream acknowledgement: the delivery's new state, the attempt's log entry, its retry
or dead-letter entry. The subscriber's breaker, which lives in the subscriber's own partition,
is counted by the BREAKERS script in the same round trip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from router.core.outcome import Outcome
from router.core.records import DeliveryStatus, WorkItem
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# The delivery fields an outcome may set; `mask` says which it sets (the others keep their
# value).
FIELDS = (
    "status",
    "updated_at",
    "attempts",
    "last_status_code",
    "last_error",
    "next_attempt_at",
    "schedule_index",
    "reason",
)
# KEYS first: the partition's retry set, dead set, ready stream; then per outcome: the
# delivery, its attempts. ARGV per outcome (STRIDE values): group, entry id, work member,
# delivery id, attempt JSON ('' = none), retention, retry due ('' = none), dead ('1'/'0'),
# mask (one '1'/'0' per FIELDS entry), then one value per FIELDS entry. Returns 1 per outcome
# recorded, or the error message of one that failed (`pcall`: not its batch's).
STRIDE = 9 + len(FIELDS)
_FIELD_SET = frozenset(FIELDS)
SCRIPT = Script(
    "finish",
    "local FIELDS = {"
    + ", ".join(f"'{name}'" for name in FIELDS)
    + "}\nlocal STRIDE = "
    + str(STRIDE)
    + """
local out = {}
local function finish(i)
  local a = STRIDE * i
  local delivery, attempts = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local group, entry, member, dlv = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local attempt, retention, due, dead = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local mask = ARGV[a + 9]
  local set = {}
  for j = 1, #FIELDS do
    if string.byte(mask, j) == 49 then
      set[#set + 1] = FIELDS[j]
      set[#set + 1] = ARGV[a + 9 + j]
    end
  end
  redis.call('HSET', delivery, unpack(set))
  if attempt ~= '' then
    redis.call('RPUSH', attempts, attempt)
    redis.call('EXPIRE', attempts, retention)
  end
  if due ~= '' then redis.call('ZADD', KEYS[1], due, member) end
  if dead == '1' then redis.call('ZADD', KEYS[2], 0, dlv) end
  redis.call('XACK', KEYS[3], group, entry)
  redis.call('XDEL', KEYS[3], entry)
end
for i = 0, (#KEYS - 3) / 2 - 1 do
  local ok, err = pcall(finish, i)
  if ok then
    out[#out + 1] = 1
  else
    out[#out + 1] = type(err) == 'table' and err.err or tostring(err)
  end
end
return out
""",
)

# KEYS: the breaker partition's open-breakers set, then per change the subscriber's breaker.
# ARGV per change: 'ok' (a success: closed) or 'fail' (one more consecutive failure), the
# threshold that opens it, open until (ms), subscriber id, retention. Returns per change what
# it did to an open breaker: its consecutive failures if it opened it, -1 if it closed it, 0.
BREAKERS = Script(
    "breakers",
    """
local out = {}
for i = 1, #KEYS - 1 do
  local a = 5 * (i - 1)
  local breaker, mode, threshold = KEYS[1 + i], ARGV[a + 1], ARGV[a + 2]
  local open_until, sub, retention = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  out[i] = 0
  if mode == 'ok' then
    if redis.call('DEL', breaker) == 1 then out[i] = -redis.call('SREM', KEYS[1], sub) end
  else
    local failures = redis.call('HINCRBY', breaker, 'failures', 1)
    redis.call('EXPIRE', breaker, retention)
    if failures >= tonumber(threshold) then
      redis.call('HSET', breaker, 'open_until', open_until)
      if redis.call('SADD', KEYS[1], sub) == 1 then out[i] = failures end
    end
  end
end
return out
""",
)

# One outcome's keys and arguments, ready to join its partition's batch.
Prepared = tuple[tuple[str, str], tuple[Any, ...]]


@dataclass(frozen=True)
class BreakerChange:
    """A success (`closes`) or a failed attempt counted against a subscriber's breaker."""

    subscriber_id: str
    closes: bool
    threshold: int
    open_until: int


def finish_args(
    keys: RouterKeys, item: WorkItem, outcome: Outcome, *, group: str, now: int, retention: int
) -> Prepared:
    """One outcome's part of a `finish_command`. Raises ValueError for a field the script
    does not set."""
    values = {"status": outcome.status, "updated_at": now, **outcome.fields}  # a StrEnum
    if not values.keys() <= _FIELD_SET:
        unknown = sorted(values.keys() - _FIELD_SET)
        raise ValueError(f"outcome sets unknown delivery fields: {unknown}")
    mask = "".join(["1" if name in values else "0" for name in FIELDS])
    own_keys = (keys.delivery(item.delivery_id), keys.delivery_attempts(item.delivery_id))
    args = (
        group,
        item.entry_id,
        item.member,
        item.delivery_id,
        orjson.dumps(outcome.attempt) if outcome.attempt is not None else b"",
        retention,
        "" if outcome.retry_at is None else outcome.retry_at,
        "1" if outcome.status is DeliveryStatus.dead else "0",
        mask,
        *[values.get(name, "") for name in FIELDS],
    )
    return own_keys, args


def finish_command(keys: RouterKeys, partition: int, outcomes: Sequence[Prepared]) -> Command:
    """The call recording `outcomes`, all of deliveries in `partition`."""
    all_keys: list[str] = [
        keys.retry_schedule(partition),
        keys.dead(partition),
        keys.ready_stream(partition),
    ]
    args: list[Any] = []
    for own_keys, own_args in outcomes:
        all_keys += own_keys
        args += own_args
    return SCRIPT.command(all_keys, args)


def breakers_command(
    keys: RouterKeys, partition: int, changes: Sequence[BreakerChange], *, retention: int
) -> Command:
    """The call applying `changes`, all to subscribers whose breakers are in `partition`."""
    all_keys = [keys.open_breakers(partition)]
    args: list[Any] = []
    for change in changes:
        all_keys.append(keys.breaker(change.subscriber_id))
        mode = "ok" if change.closes else "fail"
        args += [mode, change.threshold, change.open_until, change.subscriber_id, retention]
    return BREAKERS.command(all_keys, args)


def parse_finish(reply: list[Any]) -> list[ResponseError | None]:
    """None per outcome recorded; the error of one that was not."""
    return [None if r == 1 else ResponseError(r.decode()) for r in reply]
