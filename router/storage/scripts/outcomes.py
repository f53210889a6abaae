"""Outcomes: what handling a delivery came to, recorded in one call for a batch of them
(concurrent attempts share it, see `router.storage.batching`), each atomically with its
ready-stream acknowledgement: the delivery's new state, the attempt's log entry, its retry or
dead-letter entry, and its subscriber's breaker."""

from __future__ import annotations

from collections.abc import Sequence
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
# Per outcome, KEYS: the delivery, its attempts, its subscriber's breaker. ARGV (STRIDE values):
# group, entry id, work member, delivery id, attempt JSON ('' = none), retention, retry due
# ('' = none), dead ('1'/'0'), breaker ('ok'/'fail'/''), breaker threshold, open until,
# subscriber id, mask (one '1'/'0' per FIELDS entry), then one value per FIELDS entry.
# KEYS first: retry set, dead set, ready stream, open breakers. Returns 1 per outcome
# recorded, or the error message of one that failed (`pcall`: not its batch's).
STRIDE = 13 + len(FIELDS)
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
  local delivery, attempts, breaker = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
  local group, entry, member, dlv = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local attempt, retention, due, dead = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local mode, threshold, open_until, sub = ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], ARGV[a + 12]
  local mask = ARGV[a + 13]
  local set = {}
  for j = 1, #FIELDS do
    if string.byte(mask, j) == 49 then
      set[#set + 1] = FIELDS[j]
      set[#set + 1] = ARGV[a + 13 + j]
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
  if mode == 'ok' then
    if redis.call('DEL', breaker) == 1 then redis.call('SREM', KEYS[4], sub) end
  elseif mode == 'fail' then
    local failures = redis.call('HINCRBY', breaker, 'failures', 1)
    redis.call('EXPIRE', breaker, retention)
    if failures >= tonumber(threshold) then
      redis.call('HSET', breaker, 'open_until', open_until)
      redis.call('SADD', KEYS[4], sub)
    end
  end
end
for i = 0, (#KEYS - 4) / 3 - 1 do
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

# One outcome's keys and arguments, ready to join a batch.
Prepared = tuple[tuple[str, str, str], tuple[Any, ...]]
_BREAKER_MODES = {True: "ok", False: "fail", None: ""}


def finish_args(
    keys: RouterKeys,
    item: WorkItem,
    outcome: Outcome,
    *,
    group: str,
    now: int,
    retention: int,
    breaker_threshold: int,
    open_until: int,
) -> Prepared:
    """One outcome's part of a `finish_command`. Raises ValueError for a field the script
    does not set."""
    values = {"status": outcome.status.value, "updated_at": now, **outcome.fields}
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"outcome sets unknown delivery fields: {sorted(unknown)}")
    mask = "".join("1" if name in values else "0" for name in FIELDS)
    own_keys = (
        keys.delivery(item.delivery_id),
        keys.delivery_attempts(item.delivery_id),
        keys.breaker(item.subscriber_id),
    )
    args = (
        group,
        item.entry_id,
        item.member,
        item.delivery_id,
        orjson.dumps(outcome.attempt) if outcome.attempt is not None else b"",
        retention,
        "" if outcome.retry_at is None else outcome.retry_at,
        "1" if outcome.status is DeliveryStatus.dead else "0",
        _BREAKER_MODES[outcome.breaker],
        breaker_threshold,
        open_until,
        item.subscriber_id,
        mask,
        *(values.get(name, "") for name in FIELDS),
    )
    return own_keys, args


def finish_command(keys: RouterKeys, outcomes: Sequence[Prepared]) -> Command:
    all_keys: list[str] = [keys.retry_schedule, keys.dead, keys.ready_stream, keys.open_breakers]
    args: list[Any] = []
    for own_keys, own_args in outcomes:
        all_keys += own_keys
        args += own_args
    return SCRIPT.command(all_keys, args)


def parse_finish(reply: list[Any]) -> list[ResponseError | None]:
    """None per outcome recorded; the error of one that was not."""
    return [None if r == 1 else ResponseError(r.decode()) for r in reply]
