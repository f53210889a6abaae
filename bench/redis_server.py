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
import tempfile
import time
from collections.abc import Iterator
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
