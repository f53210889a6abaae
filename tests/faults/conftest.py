"""Fixtures of the fault suite: a Cluster of real processes per test, and the report.

Every scenario needs a real Redis (REDIS_URL) — the processes share it, so the embedded store
cannot stand in — and skips cleanly without one. Each cluster uses its own key prefix and
deletes its keys afterwards; the machine's Redis is never flushed, restarted or reconfigured.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from subscriptions.keys import key_pattern

from .harness import Cluster, RedisServer

REPORT_LINES: list[str] = []


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the fault suite needs a real Redis")
    return url


@pytest.fixture
async def cluster(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    """`cluster(**ROUTER_settings)` -> a Cluster on REDIS_URL; processes killed after."""
    made: list[Cluster] = []

    def make(redis: str | None = None, **settings: str) -> Cluster:
        workdir = tmp_path / f"cluster{len(made)}"
        workdir.mkdir()
        made.append(Cluster(workdir, redis or redis_url, **settings))
        return made[-1]

    yield make
    for c in made:
        c.stop_all()
        if c.redis_url == redis_url:
            client = Redis.from_url(redis_url)
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
