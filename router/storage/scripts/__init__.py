"""The router's Lua scripts, one module per family. Each module holds its script's source
beside the one typed function that builds its KEYS and ARGV and the one that reads its
reply, so a script's layout is read, and changed, in one place.

Every script touches the keys of one hash tag only (one cluster slot), and is sent by digest
(`Script.command`); `router.storage.client.CommandRunner` loads them all when Redis answers
NOSCRIPT (first use, a restart, SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

Command = tuple[Any, ...]  # a command's name and arguments, as sent


class Script:
    """One Lua script, known by its SHA-1 digest."""

    registry: ClassVar[list[Script]] = []  # every script defined, for reloading them together

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        Script.registry.append(self)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> Command:
        """A call of this script, by digest."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)
