"""Processes, load and bookkeeping for the fault suite.

`Cluster` starts real `webhook-router serve`/`worker` processes, receiver processes and (for the
Redis outage) a private `redis-server`, all with one key prefix; `RedisClusterNodes` is a Redis
Cluster of a scenario's own, whose nodes it may kill, restart and reshard; `burst` plays the
platform (posting events, retrying 429s); `Ledger` reads what the receivers recorded and
compares it with what was acknowledged: every (accepted event, entitled subscriber) pair must
be there at least once, and nothing may reach a subscriber that is not entitled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ADMIN_TOKEN = "faults-admin-token-0123456789"
HERE = Path(__file__).parent
RECEIVER_SCRIPT = HERE / "receiver.py"

# The platform events the suite sends, and the scope each needs (the catalog's v1 mapping).
CONTACT_CREATE = "ContactCreate"  # contacts.readonly
INBOUND_MESSAGE = "InboundMessage"  # conversations/message.readonly
LOCATION_ID = "loc_faults_0001"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def router_command() -> list[str]:
    # The console script of the environment running the tests (a venv's bin/ need not be on
    # PATH, and another install's script there would run other code).
    script = Path(sys.executable).parent / "webhook-router"
    return [str(script)] if script.exists() else [sys.executable, "-m", "router"]


def payload(event_type: str, n: int, run: str) -> dict[str, Any]:
    """An event shaped like the platform's documented payload of that type (our own values),
    with a unique `webhookId` so a retried post is recognised as the same event."""
    common = {"type": event_type, "locationId": LOCATION_ID, "webhookId": f"wh_{run}_{n:06d}"}
    if event_type == CONTACT_CREATE:
        return common | {
            "id": f"ct_{n:06d}",
            "email": f"person{n}@example.test",
            "firstName": "Fault",
            "lastName": f"Tester{n}",
            "name": f"Fault Tester{n}",
            "phone": "+15550100000",
            "source": "fault suite",
            "dateAdded": "2024-05-01T10:00:00.000Z",
            "dnd": False,
            "tags": ["faults"],
            "attachments": [],
            "customFields": [],
        }
    return common | {
        "attachments": [],
        "body": f"message number {n}",
        "contactId": f"ct_{n:06d}",
        "contentType": "text/plain",
        "conversationId": f"cv_{n:06d}",
        "dateAdded": "2024-05-01T10:00:00.000Z",
        "direction": "inbound",
        "messageType": "SMS",
        "status": "delivered",
    }


def mixed_payloads(count: int, types: tuple[str, ...] = (CONTACT_CREATE, INBOUND_MESSAGE)):
    run = uuid.uuid4().hex[:8]
    return [payload(types[i % len(types)], i, run) for i in range(count)]


# ---------------------------------------------------------------------------- processes
class Proc:
    """One child process with its output in a log file; stopped only through its own handle."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup — the crash under test."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        finally:
            self._log.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Receiver:
    proc: Proc
    port: int
    out: Path

    def url(self, marker: str, behaviour: str = "ok") -> str:
        return f"http://127.0.0.1:{self.port}/{marker}/{behaviour}"


class RedisServer:
    """A private redis-server with AOF fsync-always, restartable on the same port and dir."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis-data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.starts += 1
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.dir),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = Proc("redis", argv, dict(os.environ), self.dir.parent / "redis.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                # Loading the AOF happens after listening; PING answers LOADING until done.
                if await self._ping():
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    async def _ping(self) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await reader.readline()).startswith(b"+PONG")
        finally:
            writer.close()

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits."""
        if self.proc is not None and self.proc.alive:
            self.proc.terminate(30)


CLUSTER_SCRIPT = HERE.parent.parent / ".ci" / "redis-cluster"


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES: a node's port, id, role and (for a master) its slots."""

    port: int
    id: str
    master: bool
    failed: bool
    slots: frozenset[int]


class RedisClusterNodes:
    """A throwaway 3-master/3-replica Redis Cluster of our own (`.ci/redis-cluster`), on the
    first free ports from `REDIS_CLUSTER_BASE` (7100) up, that a test may SIGKILL nodes of,
    restart them, and reshard."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        start_from = os.environ.get("REDIS_CLUSTER_BASE", "7100")
        self.base = int(self._script("free", start_from).strip())
        self.ports = range(self.base, self.base + 6)
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.base}/0"

    def _script(self, *args: str) -> str:
        done = subprocess.run(
            [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cluster {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start(self) -> None:
        self.started = True  # a half-started cluster is still stopped
        self._script("start", str(self.base), str(self.dir))

    def stop(self) -> None:
        if self.started:
            self._script("stop", str(self.base), str(self.dir))

    def nodes(self) -> list[ClusterNode]:
        """The cluster as the first live node sees it."""
        for port in self.ports:
            done = subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "nodes"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if done.returncode == 0 and done.stdout.strip():
                return [_cluster_node(line) for line in done.stdout.strip().splitlines()]
        raise RuntimeError("no node of the cluster answers")

    def master_of(self, slot: int) -> ClusterNode | None:
        """The live master serving `slot`; None while it has none (a failover under way)."""
        live = (n for n in self.nodes() if n.master and not n.failed and slot in n.slots)
        return next(live, None)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no save, its clients see the connection drop."""
        pid = int((self.dir / str(port) / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def restart(self, port: int) -> None:
        """Start a killed node again with its old config: it rejoins, as a replica of the
        node promoted in its place."""
        self._script("restart", str(port), str(self.dir))

    async def reshard(self, source: ClusterNode, target: ClusterNode, slots: int) -> str:
        """`redis-cli --cluster reshard`: move `slots` slots (the source's lowest) from
        `source` to `target`, keys and all; returns its output, raises if it fails."""
        proc = await asyncio.create_subprocess_exec(
            "redis-cli", "--cluster", "reshard", f"127.0.0.1:{self.base}",
            "--cluster-from", source.id, "--cluster-to", target.id,
            "--cluster-slots", str(slots), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"reshard failed ({proc.returncode}):\n{text[-3000:]}")
        return text


def _cluster_node(line: str) -> ClusterNode:
    # <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot|a-b|[migrating]>...
    fields = line.split()
    flags = fields[2].split(",")
    slots: set[int] = set()
    for spec in fields[8:]:
        if spec.startswith("["):
            continue  # a slot being migrated or imported: still its owner's until done
        low, _, high = spec.partition("-")
        slots.update(range(int(low), int(high or low) + 1))
    return ClusterNode(
        port=int(fields[1].split(":")[1].split("@")[0]),
        id=fields[0],
        master="master" in flags,
        failed="fail" in flags or "fail?" in flags,
        slots=frozenset(slots),
    )


class Cluster:
    """Every process of one scenario, sharing a Redis and a unique key prefix."""

    def __init__(self, workdir: Path, redis_url: str, **settings: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.prefix = "faults" + uuid.uuid4().hex[:10]
        self.settings = {
            "ROUTER_RETRY_SCHEDULE": "0.5,1,1,2,2",
            "ROUTER_RECLAIM_AFTER": "3",
            "ROUTER_DELIVERY_TIMEOUT": "2",
        } | settings
        self.procs: list[Proc] = []
        self.serve_port = free_port()
        self._counter = Counter[str]()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
        env |= {
            "REDIS_URL": self.redis_url,
            "ROUTER_KEY_PREFIX": self.prefix,
            "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
            "ROUTER_ALLOW_PRIVATE_TARGETS": "true",
            "ROUTER_LOG_FORMAT": "json",
            "ROUTER_PORT": str(self.serve_port),
        }
        return env | self.settings | extra

    def _log(self, name: str) -> Path:
        self._counter[name] += 1
        return self.workdir / f"{name}-{self._counter[name]}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    async def serve(self, *, workers: bool = True) -> Proc:
        argv = [*router_command(), "serve", "--port", str(self.serve_port)]
        if not workers:
            argv.append("--no-workers")
        proc = Proc("serve", argv, self.env(), self._log("serve"))
        self.procs.append(proc)
        await self._wait_http(f"{self.base_url}/healthz", proc)
        return proc

    async def worker(self) -> Proc:
        proc = Proc("worker", [*router_command(), "worker"], self.env(), self._log("worker"))
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while "worker started" not in proc.log_text():
            if not proc.alive or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{proc.log_text()[-3000:]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # consumer groups joined
        return proc

    async def receiver(self, name: str = "receiver") -> Receiver:
        port = free_port()
        out = self.workdir / f"{name}.jsonl"
        out.touch()
        argv = [sys.executable, str(RECEIVER_SCRIPT), "--port", str(port), "--out", str(out)]
        proc = Proc(name, argv, dict(os.environ), self._log(name))
        self.procs.append(proc)
        await self._wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        return Receiver(proc, port, out)

    async def _wait_http(self, url: str, proc: Proc) -> None:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not proc.alive:
                    raise RuntimeError(
                        f"{proc.name} exited {proc.popen.returncode}:\n{proc.log_text()[-3000:]}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not answer {url}:\n{proc.log_text()[-3000:]}")

    async def api(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base_url + path, json=body, headers=headers) as resp,
        ):
            data = await resp.json() if resp.status != 204 else {}
            if resp.status >= 300:
                raise AssertionError(f"{method} {path} -> {resp.status} {data}")
            return data

    async def subscribe(self, name: str, url: str, scopes: list[str]) -> str:
        created = await self.api(
            "POST", "/v1/subscribers", {"name": name, "url": url, "scopes": scopes}
        )
        return created["id"]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.alive:
                proc.kill()

    def errors_in_logs(self) -> list[str]:
        """Log lines at level error or above from router processes (crashed loops etc.)."""
        lines = []
        for path in sorted(self.workdir.glob("*.log")):
            if not path.name.startswith(("serve", "worker")):
                continue
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("level") in ("error", "critical"):
                        lines.append(f"{path.name}: {line}")
        return lines


# ---------------------------------------------------------------------------- load
@dataclass
class LoadResult:
    """What the platform side saw. `accepted` maps event id -> event name (202 received);
    `accepted_at` holds when the post that got the 202 was sent (epoch seconds);
    `event_ids` maps each accepted payload's `webhookId` to its event id."""

    sent: int = 0
    accepted: dict[str, str] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    event_ids: dict[str, str] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    given_up: int = 0

    def merged(self, other: LoadResult) -> LoadResult:
        """Both loads' figures together (for a scenario sent in phases)."""
        return LoadResult(
            sent=self.sent + other.sent,
            accepted=self.accepted | other.accepted,
            accepted_at=self.accepted_at | other.accepted_at,
            event_ids=self.event_ids | other.event_ids,
            statuses=self.statuses + other.statuses,
            connection_errors=self.connection_errors + other.connection_errors,
            given_up=self.given_up + other.given_up,
        )

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def burst(
    url: str,
    payloads: list[dict[str, Any]],
    result: LoadResult,
    *,
    concurrency: int = 32,
    rate: float | None = None,
    retry_429_after: float = 1.0,
    retry_for: float = 120.0,
) -> LoadResult:
    """Post every payload to `url`, like the platform: a 429 is retried (after
    `retry_429_after`, faster than the platform), and so is a connection error (a dead router),
    until `retry_for` seconds have passed. Any other answer is final. With `rate`, posts start
    at that many per second instead of as fast as `concurrency` allows."""
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(i: int, body: dict[str, Any], session: aiohttp.ClientSession) -> None:
        if rate is not None:
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        result.sent += 1
        deadline = time.monotonic() + retry_for
        while True:
            async with gate:
                posted_at = time.time()
                try:
                    async with session.post(url, json=body) as resp:
                        status = resp.status
                        data = await resp.json() if status == 202 else None
                except (aiohttp.ClientError, OSError, TimeoutError):
                    status = None
            if status is None:
                result.connection_errors += 1
                wait = 0.2
            else:
                result.statuses[status] += 1
                if status == 202:
                    assert data is not None
                    if data["status"] != "unroutable":
                        result.accepted.setdefault(data["event_id"], data["type"])
                        result.accepted_at.setdefault(data["event_id"], posted_at)
                        result.event_ids.setdefault(body["webhookId"], data["event_id"])
                    return
                if status != 429:
                    return
                wait = retry_429_after
            if time.monotonic() + wait > deadline:
                result.given_up += 1
                return
            await asyncio.sleep(wait)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(i, body, session) for i, body in enumerate(payloads)))
    return result


async def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


# ---------------------------------------------------------------------------- ledger
def read_records(receivers: Iterable[Receiver]) -> list[dict[str, Any]]:
    records = []
    for receiver in receivers:
        # The receiver may be appending while we read: a last line with no newline yet is
        # not a record (it is read in full next time).
        complete, _, _partial = receiver.out.read_text().rpartition("\n")
        for line in complete.split("\n"):
            if line.strip():
                records.append(json.loads(line))
    return records


@dataclass
class Tally:
    sent: int
    accepted: int
    expected: int  # (accepted event, entitled subscriber) pairs
    delivered: int  # of those, delivered at least once with a 2xx
    duplicates: int  # 2xx deliveries beyond the first of a pair
    lost: int
    trespass: int  # requests that reached a subscriber not entitled
    unacknowledged: int  # pairs delivered for events whose 202 the sender never saw

    def line(self, scenario: str, seconds: float, extra: str = "") -> str:
        return (
            f"{scenario}: sent={self.sent} accepted={self.accepted} pairs={self.expected} "
            f"delivered={self.delivered} duplicates={self.duplicates} lost={self.lost} "
            f"not-entitled={self.trespass} unacknowledged-delivered={self.unacknowledged} "
            f"{extra} duration={seconds:.1f}s"
        ).replace("  ", " ")


class DeliveryLedger:
    """The scenario's promise: who must receive which accepted event, and who must not."""

    def __init__(
        self,
        receivers: list[Receiver],
        entitled: dict[str, set[str]],
        outsiders: set[str],
    ) -> None:
        self.receivers = receivers
        self.entitled = entitled  # event name -> markers entitled to it
        self.outsiders = outsiders

    def expected(self, load: LoadResult) -> set[tuple[str, str]]:
        return {
            (event_id, marker)
            for event_id, event in load.accepted.items()
            for marker in self.entitled.get(event, ())
        }

    def delivered(self, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [
            (r["event_id"], r["marker"])
            for r in records
            if r["status"] is not None and 200 <= r["status"] < 300
        ]

    def missing(self, load: LoadResult) -> set[tuple[str, str]]:
        return self.expected(load) - set(self.delivered(read_records(self.receivers)))

    async def wait_complete(self, load: LoadResult, timeout: float) -> bool:
        return await wait_until(lambda: not self.missing(load), timeout, interval=0.5)

    def tally(self, load: LoadResult) -> Tally:
        records = read_records(self.receivers)
        expected = self.expected(load)
        delivered = self.delivered(records)
        unique = set(delivered)
        interesting = [pair for pair in delivered if pair[1] not in self.outsiders]
        return Tally(
            sent=load.sent,
            accepted=len(load.accepted),
            expected=len(expected),
            delivered=len(expected & unique),
            duplicates=len(interesting) - len(set(interesting)),
            lost=len(expected - unique),
            trespass=sum(1 for r in records if r["marker"] in self.outsiders),
            unacknowledged=len({p for p in unique - expected if p[0] not in load.accepted}),
        )


# ---------------------------------------------------------------------------- subscribers
STANDARD_ENTITLED = {CONTACT_CREATE: {"contacts", "both"}, INBOUND_MESSAGE: {"both"}}
OUTSIDER = "outsider"


async def register_standard(cluster: Cluster, receiver: Receiver) -> DeliveryLedger:
    """Three subscribers on `receiver`: `contacts` (contacts.readonly), `both` (that and
    conversations/message.readonly) and `outsider` (the `.write` scopes only: entitled to
    neither event — a `.write` grant does not unlock a `.readonly` event)."""
    await cluster.subscribe("contacts", receiver.url("contacts"), ["contacts.readonly"])
    await cluster.subscribe(
        "both", receiver.url("both"), ["contacts.readonly", "conversations/message.readonly"]
    )
    await cluster.subscribe(
        OUTSIDER, receiver.url(OUTSIDER), ["contacts.write", "conversations/message.write"]
    )
    return DeliveryLedger([receiver], STANDARD_ENTITLED, {OUTSIDER})


async def count_deliveries(cluster: Cluster, subscriber_id: str, status: str) -> int:
    """How many of a subscriber's deliveries are in `status`, through the operator API."""
    total, cursor = 0, None
    while True:
        query = f"/v1/deliveries?subscriber_id={subscriber_id}&status={status}&limit=100"
        page = await cluster.api("GET", query + (f"&cursor={cursor}" if cursor else ""))
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return total
