"""Requeueing deliveries an operator retries or replays: a fresh round of the retry schedule,
due now."""

from __future__ import annotations

from collections.abc import Sequence

from router.core.records import DeliveryStatus, work_member
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: the partition's retry set, dead set, then per delivery its hash. ARGV: now, then per
# delivery (id, work member). Each becomes pending from schedule index 0, leaves the dead set
# and is due in the retry set now.
SCRIPT = Script(
    "requeue",
    """
for i = 1, #KEYS - 2 do
  local dlv, member = ARGV[2 * i], ARGV[2 * i + 1]
  redis.call('HSET', KEYS[2 + i], 'status', 'pending', 'schedule_index', 0,
    'updated_at', ARGV[1], 'reason', '')
  redis.call('ZREM', KEYS[2], dlv)
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
""",
)

assert DeliveryStatus.pending.value == "pending"  # the status the script writes


def requeue_command(
    keys: RouterKeys, partition: int, rows: Sequence[dict[str, str]], *, now: int
) -> Command:
    """The call requeueing `rows` (delivery records, all of `partition`)."""
    all_keys = [keys.retry_schedule(partition), keys.dead(partition)]
    args: list[str | int] = [now]
    for row in rows:
        all_keys.append(keys.delivery(row["id"]))
        args += [row["id"], work_member(row["id"], row["subscriber_id"], row["event_id"])]
    return SCRIPT.command(all_keys, args)
