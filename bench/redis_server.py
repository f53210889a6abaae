"""The Redis the benchmark runs against: by default its own `redis-server`, configured as the
README asks of a deployment, so that the router is measured as a user would run it.

- `appendonly yes`, `appendfsync always`: every write is in the append-only file, fsynced,
  before Redis replies (README: "Redis settings the durability promise needs");
- `--save ''`: no RDB snapshots on top, so no fork lands in the middle of a measurement;
- `maxmemory-policy noeviction`;
- on a spare loopback port, its files in a temporary directory removed afterwards.

`--redis-url` points the benchmark at another Redis instead; its persistence settings are
then recorded with the results, whatever they are.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from bench.procs import Proc, child_env, free_port

SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "",
    "maxmemory-policy": "noeviction",
}


@contextlib.contextmanager
def own_redis(logdir: Path, timeout: float = 20.0) -> Iterator[str]:
    """Run a redis-server for the block; yields its URL. Stopped (SIGTERM) and its directory
    removed when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server not found: install Redis (e.g. apt-get install redis-server), "
            "or give --redis-url"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
    for name, value in SETTINGS.items():
        argv += [f"--{name}", value]
    try:
        with Proc("redis-server", argv, child_env({}), logdir) as proc:
            client = redis.Redis(port=port, socket_timeout=1)
            deadline = time.monotonic() + timeout
            while True:
                if not proc.alive():
                    raise RuntimeError(f"redis-server exited early:\n{proc.tail()}")
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"redis-server not up after {timeout:g}s") from None
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def describe(client: Any) -> dict[str, Any]:
    """The server's version and the persistence settings that matter to the results."""
    info = await client.info("server")
    described: dict[str, Any] = {"redis_version": info.get("redis_version")}
    for name in SETTINGS:
        try:
            described[name] = (await client.config_get(name)).get(name)
        except Exception:  # CONFIG may be renamed or refused on a managed Redis
            described[name] = "unknown"
    return described


# The benchmark's clusters take loopback ports from this range (6 consecutive ones, their
# cluster bus ports 10,000 above), so that they never meet CI's or another user's.
CLUSTER_PORTS = range(7401, 7500)
CLUSTER_NODES = 6  # 3 masters, each with one replica
CLUSTER_SETTINGS = {
    # As .ci/redis-cluster: fast failover, and a missing master's slots do not stop the others.
    "cluster-node-timeout": "2000",
    "cluster-require-full-coverage": "no",
    "repl-diskless-sync": "yes",
    "repl-diskless-sync-delay": "0",
}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_base() -> int:
    """The first port of CLUSTER_PORTS from which CLUSTER_NODES ports and their bus ports are
    free."""
    for base in range(CLUSTER_PORTS.start, CLUSTER_PORTS.stop - CLUSTER_NODES + 1, CLUSTER_NODES):
        ports = range(base, base + CLUSTER_NODES)
        if all(_port_free(p) and _port_free(p + 10_000) for p in ports):
            return base
    raise RuntimeError(f"no {CLUSTER_NODES} free ports in {CLUSTER_PORTS}")


@contextlib.contextmanager
def own_cluster(logdir: Path, timeout: float = 60.0) -> Iterator[str]:
    """Run a Redis Cluster of 3 masters and 3 replicas for the block, every node set up as the
    single server (`SETTINGS`: AOF fsynced on every write, no snapshots) plus
    `CLUSTER_SETTINGS`; yields the URL of its first node. The nodes are stopped by pid and
    their directory removed when the block ends."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed for the cluster scenario")
    base = cluster_base()
    ports = list(range(base, base + CLUSTER_NODES))
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        with contextlib.ExitStack() as stack:
            for port in ports:
                (workdir / str(port)).mkdir()
                argv = [binary, "--port", str(port), "--bind", "127.0.0.1"]
                argv += ["--dir", str(workdir / str(port)), "--cluster-enabled", "yes"]
                argv += ["--cluster-config-file", "nodes.conf"]
                for name, value in (SETTINGS | CLUSTER_SETTINGS).items():
                    argv += [f"--{name}", value]
                stack.enter_context(Proc(f"redis-cluster-{port}", argv, child_env({}), logdir))
            deadline = time.monotonic() + timeout
            clients = [redis.Redis(port=p, socket_timeout=2, decode_responses=True) for p in ports]
            _until(deadline, "the cluster's nodes answer", lambda: all(_pings(c) for c in clients))
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout[-2000:]}")
            _until(deadline, "the cluster is ok", lambda: all(_cluster_ok(c) for c in clients))
            for client in clients:
                client.close()
            yield f"redis://127.0.0.1:{base}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _until(deadline: float, what: str, check: Callable[[], bool]) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited in vain for {what}")
        time.sleep(0.1)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _cluster_ok(client: redis.Redis) -> bool:
    """The node sees the cluster ok and a replica beside every master in its slot map, and
    a master has its replica in sync, a replica its link to the master up.

    The slot map matters: a router decides at start-up whether writes wait for a replica
    (`ROUTER_MIN_REPLICAS=auto`) from the replicas its cluster client finds there, and
    `redis-cli --cluster create` returns, and `cluster_state` is ok, seconds before gossip
    has told every node which nodes are replicas (about 9 s here).
    """
    try:
        if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            return False
        ranges = client.execute_command("CLUSTER", "SLOTS")
        replication = client.info("replication")
    except redis.RedisError:
        return False
    if len(ranges) < 3 or any(len(r) < 4 for r in ranges):  # [start, end, master, replica]
        return False
    if replication["role"] == "master":
        return int(replication.get("connected_slaves", 0)) >= 1 and all(
            replication[f"slave{i}"]["state"] == "online"
            for i in range(int(replication["connected_slaves"]))
        )
    return replication.get("master_link_status") == "up"
