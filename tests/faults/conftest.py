"""Fixtures of the fault suite: a Cluster of real processes per test, and the report.

Every scenario needs a real Redis — the processes share it, so the embedded store cannot
stand in: REDIS_URL's (skipped cleanly without it), or a Redis Cluster of the test's own
(`redis_cluster`, skipped without redis-server and redis-cli). Each cluster of processes uses
its own key prefix and deletes its keys afterwards; the machine's Redis is never flushed,
restarted or reconfigured.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from subscriptions.keys import key_pattern

from .harness import Cluster, RedisClusterNodes, RedisServer

REPORT_LINES: list[str] = []


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    """`cluster(redis=None, **ROUTER_settings)` -> a Cluster on `redis` (default REDIS_URL,
    skipped when unset); processes killed after."""
    made: list[Cluster] = []
    shared = os.environ.get("REDIS_URL")

    def make(redis: str | None = None, **settings: str) -> Cluster:
        url = redis or shared
        if not url:
            pytest.skip("REDIS_URL is not set: the fault suite needs a real Redis")
        workdir = tmp_path / f"cluster{len(made)}"
        workdir.mkdir()
        made.append(Cluster(workdir, url, **settings))
        return made[-1]

    yield make
    for c in made:
        c.stop_all()
        if shared and c.redis_url == shared:
            client = Redis.from_url(shared)
            try:
                for key in client.scan_iter(match=key_pattern(c.prefix), count=1000):
                    client.delete(key)
            finally:
                client.close()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of our own (AOF, fsync always) that a test may stop and start."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A 3-master/3-replica Redis Cluster of the test's own, stopped (and its files deleted)
    after; a test may kill, restart and reshard its nodes."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH: the Redis Cluster scenarios need it")
    nodes = RedisClusterNodes(tmp_path / "redis-cluster")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def report(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], None]]:
    """Print a scenario's figures even under capture, and keep them for the summary."""
    path = tmp_path_factory.getbasetemp() / "faults_report.txt"

    def emit(line: str) -> None:
        REPORT_LINES.append(line)
        with path.open("a") as out:
            out.write(line + "\n")
        with capsys.disabled():
            print("\n" + line, flush=True)

    yield emit


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT_LINES:
        terminalreporter.section("fault scenarios")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
