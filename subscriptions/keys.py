"""The subscriber registry's Redis keys (the router's own are in `router.storage.keys`).

Every key of a deployment starts with the hash tag `{<prefix>}` (`tag`), so the registry's
multi-key scripts touch one hash slot, on a single Redis or a Redis Cluster alike.
"""

from __future__ import annotations


def tag(prefix: str) -> str:
    """The hash tag every key of the deployment `prefix` starts with."""
    return "{" + prefix + "}"


def key_pattern(prefix: str) -> str:
    """A SCAN pattern matching every key of the deployment `prefix`, its partitions' tags
    (`{<prefix>:…}`) included (tests clean up with it)."""
    return "\\{" + prefix + "[}:]*"


class SubscriberKeys:
    """The registry's key names under one prefix (`ROUTER_KEY_PREFIX`, `wr` by default)."""

    def __init__(self, prefix: str = "wr") -> None:
        self.prefix = prefix
        self._p = tag(prefix)

    @property
    def subscribers(self) -> str:
        """Hash: subscriber id -> subscriber JSON."""
        return f"{self._p}:subscribers"

    @property
    def subscriber_ids(self) -> str:
        """Sorted set (all scores 0): subscriber ids in id order, for cursor pagination."""
        return f"{self._p}:subscribers:ids"

    @property
    def subscribers_version(self) -> str:
        """Counter bumped by every subscriber change, so readers may cache snapshots."""
        return f"{self._p}:subscribers:version"

    def scope_holders(self, scope: str) -> str:
        """Set: ids of the subscribers holding `scope` (the entitlement index)."""
        return f"{self._p}:scope:{scope}"
