"""The retry schedule: deliveries whose retry time has come, moved back to the ready stream."""

from __future__ import annotations

from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: retry schedule, ready stream. ARGV: now (ms), most to move. Returns how many moved.
SCRIPT = Script(
    "move_due",
    """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'm', member)
end
return #due
""",
)


def move_due_command(keys: RouterKeys, partition: int, *, now: int, limit: int) -> Command:
    keys_used = [keys.retry_schedule(partition), keys.ready_stream(partition)]
    return SCRIPT.command(keys_used, [now, limit])
