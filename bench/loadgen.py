"""The load generator: POSTs benchmark events over N connections and reports what came back.

Two modes: max rate (as fast as the connections allow, for `--duration` seconds or until
`--count` events) and fixed rate (`--rate` events/s, `--count` or `--duration` * rate events).
With `--record`, two times (time.time()) of every accepted event are written, keyed by the
`event_id` of its 202 response: `sends`, just before the request, and `accepts`, once the 202
has been read. At a fixed rate, `behind_ms` says how late the sends were against their
schedule (they wait when `--connections` requests are already in flight, so a long stall of
the server delays them). The report is one JSON object written to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

from bench.loop import use_uvloop
from bench.payload import event_body
from bench.stats import percentile

HEADERS = {"Content-Type": "application/json"}
PERCENTILES = {"p50": 50, "p99": 99, "max": 100}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(3)
        self.next_index = 0
        self.statuses: Counter[str] = Counter()
        self.sends: dict[str, float] = {}
        self.accepts: dict[str, float] = {}
        self.behind: list[float] = []
        self.first_send: float | None = None
        self.last_done = 0.0
        self.errors: Counter[str] = Counter()
        self.loop = "asyncio"

    def take(self) -> int | None:
        if self.args.count is not None and self.next_index >= self.args.count:
            return None
        index = self.next_index
        self.next_index += 1
        return index

    async def post(self, session: aiohttp.ClientSession, index: int) -> None:
        body = event_body(self.tag, index)
        sent = time.time()
        if self.first_send is None:
            self.first_send = sent
        try:
            async with session.post(self.args.url, data=body, headers=HEADERS) as resp:
                raw = await resp.read()
                self.statuses[str(resp.status)] += 1
                if resp.status == 202 and self.args.record:
                    event_id = orjson.loads(raw)["event_id"]
                    self.accepts[event_id] = time.time()
                    self.sends[event_id] = sent
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
        self.last_done = time.time()

    async def max_rate(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + self.args.duration if self.args.duration else None

        async def connection() -> None:
            while deadline is None or time.monotonic() < deadline:
                index = self.take()
                if index is None:
                    return
                await self.post(session, index)

        await asyncio.gather(*(connection() for _ in range(self.args.connections)))

    async def fixed_rate(self, session: aiohttp.ClientSession) -> None:
        total = self.args.count or int(self.args.rate * self.args.duration)
        in_flight = asyncio.Semaphore(self.args.connections)
        tasks: set[asyncio.Task[None]] = set()

        async def one(index: int) -> None:
            try:
                await self.post(session, index)
            finally:
                in_flight.release()

        start = time.perf_counter() + 0.05
        for index in range(total):
            due = start + index / self.args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            self.behind.append(time.perf_counter() - due)
            self.next_index = index + 1
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=self.args.connections)
        timeout = aiohttp.ClientTimeout(total=self.args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            if self.args.rate:
                await self.fixed_rate(session)
            else:
                await self.max_rate(session)
        accepted = self.statuses.get("202", 0)
        elapsed = (self.last_done - self.first_send) if self.first_send else 0.0
        return {
            "url": self.args.url,
            "connections": self.args.connections,
            "mode": "fixed" if self.args.rate else "max",
            "target_rate": self.args.rate,
            "sent": self.next_index,
            "accepted": accepted,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "first_send": self.first_send,
            "last_done": self.last_done,
            "elapsed": elapsed,
            "accepted_per_s": accepted / elapsed if elapsed > 0 else 0.0,
            "behind_ms": _behind(self.behind),
            "loop": self.loop,
            "sends": self.sends,
            "accepts": self.accepts,
        }


def _behind(lags: list[float]) -> dict[str, float] | None:
    """How late the sends of a fixed-rate run were (ms): median, p99 and max."""
    if not lags:
        return None
    ordered = [lag * 1e3 for lag in sorted(lags)]
    return {p: round(percentile(ordered, n) or 0.0, 2) for p, n in PERCENTILES.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url", required=True, help="ingest URL, e.g. http://127.0.0.1:8080/webhooks"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, help="seconds to send for")
    parser.add_argument("--count", type=int, help="events to send")
    parser.add_argument("--rate", type=float, help="fixed rate (events/s); default: max rate")
    parser.add_argument("--record", action="store_true", help="record send times by event id")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument("--out", required=True, help="file to write the JSON report to")
    args = parser.parse_args(argv)
    if args.duration is None and args.count is None:
        parser.error("give --duration or --count (the run must end by itself)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = Run(args)
    run.loop = use_uvloop()
    report = asyncio.run(run.run())
    with open(args.out, "wb") as fh:
        fh.write(orjson.dumps(report))


if __name__ == "__main__":
    main()
