"""Ready-stream housekeeping: an entry dropped, or entries handed back as fresh ones."""

from __future__ import annotations

from collections.abc import Sequence

from router.core.records import WorkItem
from router.storage.scripts import Command, Script

# KEYS: the ready stream. ARGV: group, entry ids. Acknowledges and deletes the entries.
ACK = Script(
    "ack",
    """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
""",
)

# KEYS: the ready stream. ARGV: group, n, n entry ids, n work members. Adds each member as a
# fresh entry and acknowledges and deletes the old ones, in one step.
HAND_BACK = Script(
    "hand_back",
    """
local n = tonumber(ARGV[2])
for i = 1, n do redis.call('XADD', KEYS[1], '*', 'm', ARGV[2 + n + i]) end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3, 2 + n))
redis.call('XDEL', KEYS[1], unpack(ARGV, 3, 2 + n))
""",
)


def ack_command(stream: str, group: str, entry_ids: Sequence[str]) -> Command:
    return ACK.command([stream], [group, *entry_ids])


def hand_back_command(stream: str, group: str, items: Sequence[WorkItem]) -> Command:
    """The call requeueing `items` (all of `stream`) as fresh entries any worker can read."""
    return HAND_BACK.command(
        [stream],
        [group, len(items), *(i.entry_id for i in items), *(i.member for i in items)],
    )
