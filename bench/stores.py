"""The Redis a router runs on, as the benchmark reads it: one server, or a Redis Cluster's
nodes. Scenarios wait on it, clean up after themselves on it and count its CPU, keys and
commands through this one interface, whichever it is.

On a cluster the router splits its work over partitions (`fixtures.partitions`), each a hash
tag, so its keys and commands land on every master. The benchmark reads each master with a
client of its own (SCAN, INFO), and reaches a key wherever it lives with a cluster client.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bench import fixtures

# Commands the benchmark itself, the cluster's own machinery or a client's set-up send: left
# out of the command counts, which are about the router's work.
HOUSEKEEPING = frozenset(
    {"info", "ping", "replconf", "cluster", "command", "config", "client", "hello", "select"}
    | {"scan", "unlink", "memory", "readonly", "psync", "sync", "auth"}
)


@dataclass
class Node:
    name: str  # host:port
    client: Redis
    master: bool
    slots: list[tuple[int, int]] = field(default_factory=list)  # masters' ranges


class Store:
    """A single Redis (`single`) or a cluster (`connect_cluster`)."""

    def __init__(
        self,
        url: str,
        client: Redis | RedisCluster,
        nodes: list[Node],
        partitions_setting: str | None = None,
    ) -> None:
        self.url = url
        self.client = client
        self.nodes = nodes
        self.cluster = isinstance(client, RedisCluster)
        # As the routers settle ROUTER_PARTITIONS (the benchmark's --router-env may set it).
        self.partitions = fixtures.partitions(self.cluster, partitions_setting)

    @classmethod
    def single(cls, url: str, partitions_setting: str | None = None) -> Store:
        client = Redis.from_url(url, decode_responses=False)
        node = Node(_name(client), client, True, [(0, 16383)])
        return cls(url, client, [node], partitions_setting)

    @classmethod
    async def connect_cluster(cls, url: str, partitions_setting: str | None = None) -> Store:
        client = RedisCluster.from_url(url, decode_responses=False)
        await client.initialize()
        nodes: list[Node] = []
        first = Redis.from_url(url, decode_responses=False)
        try:
            ranges = await first.execute_command("CLUSTER", "SLOTS")
        finally:
            await first.aclose()
        by_master: dict[str, list[tuple[int, int]]] = {}
        for start, end, master, *_replicas in ranges:
            name = f"{_text(master[0])}:{master[1]}"
            by_master.setdefault(name, []).append((int(start), int(end)))
        for node in sorted(client.get_nodes(), key=lambda n: n.port):
            one = Redis(host=node.host, port=node.port, decode_responses=False)
            nodes.append(Node(node.name, one, node.name in by_master, by_master.get(node.name, [])))
        return cls(url, client, nodes, partitions_setting)

    @property
    def masters(self) -> list[Node]:
        return [n for n in self.nodes if n.master]

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "cluster": self.cluster,
            "partitions": self.partitions,
            "masters": {n.name: n.slots for n in self.masters},
            "replicas": [n.name for n in self.nodes if not n.master],
        }

    def master_of(self, slot: int) -> str:
        return next(n.name for n in self.masters if any(a <= slot <= b for a, b in n.slots))

    def tag_masters(self, prefix: str) -> dict[str, str]:
        """Each hash tag of `prefix` (the partitions' and the registry's) -> its master."""
        tags = [*fixtures.partition_tags(prefix, self.partitions), fixtures.registry_tag(prefix)]
        return {t: self.master_of(fixtures.slot(t)) for t in tags}

    # ------------------------------------------------------------------ reading every node
    async def cpu(self) -> float:
        """CPU seconds of every node so far (INFO cpu, replicas included: what the router's
        writes cost the store), other clients' work included."""
        return sum((await self.cpu_by_node()).values())

    async def cpu_by_node(self) -> dict[str, float]:
        infos = await asyncio.gather(*(n.client.info("cpu") for n in self.nodes))
        return {
            n.name: float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            for n, info in zip(self.nodes, infos, strict=True)
        }

    async def commandstats(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per master: command -> (calls, µs) so far (INFO commandstats; commands run inside
        scripts count too), without HOUSEKEEPING."""
        infos = await asyncio.gather(*(n.client.info("commandstats") for n in self.masters))
        out = {}
        for node, info in zip(self.masters, infos, strict=True):
            out[node.name] = {
                name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for name, v in info.items()
                if name.removeprefix("cmdstat_").split("|")[0] not in HOUSEKEEPING
            }
        return out

    async def keys_by_tag(self, pattern: str) -> dict[str, Counter[str]]:
        """Per master: how many keys matching `pattern` it holds, by hash tag (SCAN)."""

        async def one(node: Node) -> Counter[str]:
            tags: Counter[str] = Counter()
            async for key in node.client.scan_iter(match=pattern, count=1000):
                tags[fixtures.key_tag(key)] += 1
            return tags

        counts = await asyncio.gather(*(one(n) for n in self.masters))
        return {n.name: c for n, c in zip(self.masters, counts, strict=True)}

    async def delete(self, pattern: str) -> int:
        """Delete every key matching `pattern` on every master; returns how many. On a cluster
        one UNLINK takes keys of one slot only, so keys are grouped by slot."""

        async def one(node: Node) -> int:
            deleted = 0
            batches: dict[int, list[bytes]] = {}
            async for key in node.client.scan_iter(match=pattern, count=1000):
                batch = batches.setdefault(fixtures.slot(key.decode()) if self.cluster else 0, [])
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await node.client.unlink(*batch)
                    batch.clear()
            for batch in batches.values():
                if batch:
                    deleted += await node.client.unlink(*batch)
            return deleted

        return sum(await asyncio.gather(*(one(n) for n in self.masters)))

    # ------------------------------------------------------------------ the router's keys
    async def idle(self, prefix: str) -> bool:
        """True when no event awaits dispatch and no delivery awaits an attempt, in any
        partition."""
        keys = fixtures.work_keys(prefix, self.partitions)
        lengths = await limited(
            [
                self.client.zcard(k) if i % 3 == 2 else self.client.xlen(k)
                for i, k in enumerate(keys)
            ]
        )
        return not any(lengths)

    async def stored_events(self, prefix: str) -> int:
        """Events in the partitions' event streams (all the events accepted, while nothing
        dispatches)."""
        streams = fixtures.events_streams(prefix, self.partitions)
        return sum(await limited([self.client.xlen(k) for k in streams]))

    async def ready_pending(self, prefix: str) -> int:
        """Deliveries read for an attempt and not acknowledged, in every partition."""
        streams = fixtures.ready_streams(prefix, self.partitions)
        infos = await limited(
            [self.client.xpending(k, fixtures.DELIVER_GROUP) for k in streams],
            return_exceptions=True,
        )
        return sum(i["pending"] for i in infos if isinstance(i, dict))

    async def delivery_states(self, prefix: str, delivery_ids: list[str]) -> dict[str, int]:
        """How many of `delivery_ids` are in each state (`missing`: no record)."""
        keys = [fixtures.delivery_key(prefix, self.partitions, d) for d in delivery_ids]
        states = await limited([self.client.hget(k, "status") for k in keys])
        return dict(Counter(_text(s) if s is not None else "missing" for s in states))

    async def aclose(self) -> None:
        for node in self.nodes:
            if node.client is not self.client:
                await node.client.aclose()
        await self.client.aclose()


async def limited(
    calls: list[Coroutine[Any, Any, Any]], at_once: int = 50, return_exceptions: bool = False
) -> list[Any]:
    """The results of `calls`, run `at_once` at a time: the clients' pools hold 100
    connections (per node on a cluster), and one call in flight takes one."""
    results: list[Any] = []
    for start in range(0, len(calls), at_once):
        batch = calls[start : start + at_once]
        results += await asyncio.gather(*batch, return_exceptions=return_exceptions)
    return results


def _name(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
