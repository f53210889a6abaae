"""The benchmark: the router against the bare limits, side by side, in one run.

Every scenario starts its own processes (the router through its real CLI, receivers, the load
generator, baselines), uses its own ROUTER_KEY_PREFIX, and deletes that prefix's keys and
stops every process it started when it ends, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.procs import REPO, Proc, child_env, free_port, python_module, router_cli, wait_http
from bench.profile import top_frames
from subscriptions.catalog import load_catalog
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import Keys
from subscriptions.models import SigningSecret, Subscriber, generate_secret
from subscriptions.store import SubscriberStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("A", "B", "C", "D", "E", "F")
ENTITLED_SCOPE = "contacts.readonly"  # ContactCreate's scope
UNRELATED_SCOPE = "calendars.readonly"
# The router's delivery concurrency towards 10 subscribers: ROUTER_SUBSCRIBER_CONCURRENCY
# (10) each, under ROUTER_WORKER_CONCURRENCY (256); the client baseline uses the same.
DELIVERY_CONCURRENCY = 100


@dataclass(frozen=True)
class Sizes:
    a_seconds: float
    a_connections: int
    b_events: int
    c_rate: float
    c_seconds: float
    d_events: int
    d_registered: tuple[int, ...]
    e_counts: tuple[int, int]
    e_rate: float
    e_retention: int
    f_events: int


FULL = Sizes(
    a_seconds=10,
    a_connections=64,
    b_events=3000,
    c_rate=500,
    c_seconds=20,
    d_events=5000,
    d_registered=(10, 1000, 10_000),
    e_counts=(20_000, 200_000),
    e_rate=500,
    e_retention=10,
    f_events=3000,
)
QUICK = Sizes(
    a_seconds=3,
    a_connections=64,
    b_events=300,
    c_rate=500,
    c_seconds=5,
    d_events=1000,
    d_registered=(10, 100, 1000),
    e_counts=(2000, 10_000),
    e_rate=500,
    e_retention=5,
    f_events=300,
)


@dataclass
class Row:
    scenario: str
    measurement: str
    value: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # 1-min load average at the start


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.repeats: int = args.repeats or (1 if args.quick else 3)
        self.redis_url: str = args.redis_url
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.token = secrets.token_hex(3)
        self.logdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-"))
        self.redis = Redis.from_url(self.redis_url, decode_responses=False)
        self.catalog = load_catalog()
        self.report = Report()

    # ------------------------------------------------------------------ plumbing
    def prefix(self, name: str) -> str:
        return f"bench-{self.token}-{name}"

    async def cleanup(self, prefix: str) -> int:
        """Delete every key of `prefix`; returns how many."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=Keys(prefix).pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted

    @contextlib.asynccontextmanager
    async def keyspace(self, name: str) -> AsyncIterator[tuple[str, contextlib.ExitStack]]:
        """A fresh key prefix and a stack for the processes using it: they are stopped
        before the prefix's keys are deleted, so none can write after the cleanup."""
        prefix = self.prefix(name)
        try:
            with contextlib.ExitStack() as stack:
                yield prefix, stack
        finally:
            await self.cleanup(prefix)

    def router(
        self, stack: contextlib.ExitStack, name: str, prefix: str, command: str, **env: Any
    ) -> tuple[Proc, int]:
        """Start `webhook-router serve|serve --no-workers|worker` on `prefix`."""
        port = free_port()
        argv = router_cli() + command.split()
        if command.startswith("serve"):
            argv += ["--port", str(port)]
        settings = {
            "REDIS_URL": self.redis_url,
            "ROUTER_ADMIN_TOKEN": "wra_bench_" + secrets.token_hex(16),
            "ROUTER_ALLOW_PRIVATE_TARGETS": "true",
            "ROUTER_LOG_FORMAT": "json",
            "ROUTER_LOG_LEVEL": "warning",
            "ROUTER_KEY_PREFIX": prefix,
        }
        settings.update({k: str(v) for k, v in env.items()})
        settings.update(self.args.router_env)
        proc = stack.enter_context(Proc(name, argv, child_env(settings), self.logdir))
        return proc, port

    async def receiver(self, stack: contextlib.ExitStack) -> int:
        port = free_port()
        proc = stack.enter_context(
            Proc(
                "receiver",
                [*python_module("bench.receiver"), "--port", str(port)],
                child_env({}),
                self.logdir,
            )
        )
        await wait_http(proc, f"http://127.0.0.1:{port}/_bench/stats")
        return port

    async def _get(self, url: str, method: str = "GET") -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.request(method, url) as resp,
        ):
            return orjson.loads(await resp.read())

    async def receiver_stats(self, port: int) -> dict[str, Any]:
        return await self._get(f"http://127.0.0.1:{port}/_bench/stats")

    async def receiver_reset(self, port: int) -> None:
        await self._get(f"http://127.0.0.1:{port}/_bench/reset", "POST")

    async def run_process(self, name: str, argv: list[str], timeout: float) -> dict[str, Any]:
        """Run a helper process to its end and return the JSON report it wrote."""
        out = self.logdir / f"{name}-{time.monotonic_ns()}.json"
        with Proc(name, [*argv, "--out", str(out)], child_env({}), self.logdir) as proc:
            code = await asyncio.to_thread(proc.wait, timeout)
            if code != 0:
                raise RuntimeError(f"{name} exited with {code}:\n{proc.tail()}")
        return orjson.loads(out.read_bytes())

    async def loadgen(
        self,
        url: str,
        *,
        connections: int,
        duration: float | None = None,
        count: int | None = None,
        rate: float | None = None,
        record: bool = False,
    ) -> dict[str, Any]:
        argv = [*python_module("bench.loadgen"), "--url", url, "--connections", str(connections)]
        if duration is not None:
            argv += ["--duration", str(duration)]
        if count is not None:
            argv += ["--count", str(count)]
        if rate is not None:
            argv += ["--rate", str(rate)]
        if record:
            argv.append("--record")
        expected = duration or (count / rate if rate and count else (count or 0) / 200)
        return await self.run_process("loadgen", argv, timeout=expected + 120)

    async def register(
        self, prefix: str, urls: list[str], unrelated: int = 0, unrelated_url: str = ""
    ) -> None:
        """Register one entitled subscriber per URL, plus `unrelated` holders of another
        scope (in bulk, through the store's import)."""
        store = SubscriberStore(self.redis, Keys(prefix), self.catalog)
        now = now_ms()

        def subscriber(name: str, url: str, scope: str) -> Subscriber:
            return Subscriber(
                id=new_id("sub", now),
                name=name,
                url=url,
                scopes=[scope],
                secrets=[SigningSecret(secret=generate_secret())],
                created_at=now,
                updated_at=now,
            )

        entitled = [subscriber(f"bench-{i}", url, ENTITLED_SCOPE) for i, url in enumerate(urls)]
        await store.import_subscribers(entitled)
        for start in range(0, unrelated, 1000):
            batch = [
                subscriber(f"other-{i}", unrelated_url, UNRELATED_SCOPE)
                for i in range(start, min(start + 1000, unrelated))
            ]
            await store.import_subscribers(batch)

    async def wait_arrivals(
        self, port: int, expected: int, stall: float = 20.0, drained: Keys | None = None
    ) -> dict[str, Any]:
        """Wait until the receiver has `expected` arrivals, or none came for `stall` s, or
        (with `drained`) the router has no work left under those keys."""
        last_count, last_change = -1, time.monotonic()
        while True:
            stats = await self.receiver_stats(port)
            if stats["count"] >= expected:
                return stats
            if drained is not None and await self._idle(drained):
                stats["drained"] = True
                return stats
            if stats["count"] != last_count:
                last_count, last_change = stats["count"], time.monotonic()
            elif time.monotonic() - last_change > stall:
                stats["stalled"] = True
                return stats
            await asyncio.sleep(0.05)

    async def preload(self, prefix: str, events: int) -> dict[str, Any]:
        """Accept `events` events through `serve --no-workers` (nothing dispatched yet)."""
        with contextlib.ExitStack() as stack:
            proc, port = self.router(stack, "preload-serve", prefix, "serve --no-workers")
            await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
            return await self.loadgen(
                f"http://127.0.0.1:{port}/webhooks", connections=32, count=events
            )

    async def redis_cpu(self) -> float:
        """The Redis server's CPU seconds so far (INFO cpu; the whole server, so other
        clients' work counts too)."""
        info = await self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    @contextlib.contextmanager
    def profiled(self, proc: Proc, name: str, first: bool = True) -> Iterator[None]:
        """Record `proc` with py-spy while the block runs (with --profile; the first round
        of a scenario only)."""
        if not self.args.profile or not first:
            yield
            return
        raw = RESULTS / f"{self.run_id}-profile-{name}.txt"
        spy = Proc(
            f"py-spy-{name}",
            [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(proc.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "-o",
                str(raw),
            ],
            child_env({}),
            self.logdir,
        )
        try:
            yield
        finally:
            spy.stop(signal.SIGINT, timeout=30)
            if raw.exists():
                self.report.profiles[name] = top_frames(raw) | {"file": raw.name}
            else:
                self.report.profiles[name] = {"error": spy.tail()}

    def add(self, row: Row) -> None:
        self.report.rows.append(row)
        print(_format_row(row), flush=True)

    # ------------------------------------------------------------------ scenarios
    async def scenario_a(self) -> None:
        s = self.sizes
        rounds: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            port = free_port()
            baseline = stack.enter_context(
                Proc(
                    "baseline-ingest",
                    [*python_module("bench.baseline_ingest"), "--port", str(port)],
                    child_env({}),
                    self.logdir,
                )
            )
            await wait_http(baseline, f"http://127.0.0.1:{port}/healthz")
            url = f"http://127.0.0.1:{port}/webhooks"
            await self.loadgen(url, connections=s.a_connections, duration=1)  # warm-up
            for number, sides in _paired_rounds(self.repeats):
                result: dict[str, Any] = {}
                for side in sides:
                    if side == "baseline":
                        cpu = baseline.cpu_seconds()
                        run = await self.loadgen(
                            url, connections=s.a_connections, duration=s.a_seconds
                        )
                        result["baseline"] = _strip(run)
                        result["baseline_cpu"] = _per_unit(
                            cpu, baseline.cpu_seconds(), run["accepted"]
                        )
                    else:
                        result.update(await self._a_router(number))
                result["ratio"] = _ratio(
                    result["router"]["accepted_per_s"], result["baseline"]["accepted_per_s"]
                )
                rounds.append(result)
        self.report.details["A"] = {"router_command": "serve --no-workers", "rounds": rounds}
        self._paired_row(
            "A",
            f"ingest accepted/s, {s.a_connections} conns, {s.a_seconds:g} s",
            "ev/s",
            "≥ 0.60",
            0.60,
            rounds,
            rate=lambda r: (r["router"]["accepted_per_s"], r["baseline"]["accepted_per_s"]),
            unit="event",
            extra=_non_2xx_rounds(rounds),
        )

    async def _a_router(self, number: int) -> dict[str, Any]:
        """One round of A against the router: its own keyspace and `serve --no-workers`."""
        s = self.sizes
        async with self.keyspace(f"a{number}") as (prefix, _):
            with contextlib.ExitStack() as stack:
                proc, port = self.router(stack, f"serve-a{number}", prefix, "serve --no-workers")
                await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
                url = f"http://127.0.0.1:{port}/webhooks"
                await self.loadgen(url, connections=s.a_connections, duration=1)
                cpu, redis_cpu = proc.cpu_seconds(), await self.redis_cpu()
                with self.profiled(proc, "A", first=number == 0):
                    run = await self.loadgen(url, connections=s.a_connections, duration=s.a_seconds)
                return {
                    "router": _strip(run),
                    "router_cpu": _per_unit(cpu, proc.cpu_seconds(), run["accepted"]),
                    "redis_cpu": _per_unit(redis_cpu, await self.redis_cpu(), run["accepted"]),
                    "router_rss": proc.rss_bytes(),
                }

    async def scenario_b(self) -> None:
        s = self.sizes
        fan_out = 10
        rounds: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            rport = await self.receiver(stack)
            urls = [f"http://127.0.0.1:{rport}/b/{i}" for i in range(fan_out)]
            for number, sides in _paired_rounds(self.repeats):
                result: dict[str, Any] = {}
                for side in sides:
                    await self.receiver_reset(rport)
                    if side == "baseline":
                        client = await self.run_process(
                            "baseline-client",
                            [
                                *python_module("bench.baseline_client"),
                                "--urls",
                                ",".join(urls),
                                "--events",
                                str(s.b_events),
                                "--concurrency",
                                str(DELIVERY_CONCURRENCY),
                            ],
                            timeout=600,
                        )
                        result["baseline_client"] = client
                        result["baseline_receiver"] = await self.receiver_stats(rport)
                        result["baseline_cpu"] = (
                            client["cpu_s"] * 1e6 / client["posts"] if client["posts"] else None
                        )
                    else:
                        result.update(await self._b_router(number, rport, urls))
                result["ratio"] = _ratio(
                    _arrival_rate(result["router_receiver"]),
                    _arrival_rate(result["baseline_receiver"]),
                )
                rounds.append(result)
        self.report.details["B"] = {"concurrency": DELIVERY_CONCURRENCY, "rounds": rounds}
        notes = dict.fromkeys(_delivery_note(r["router_receiver"], r["expected"]) for r in rounds)
        self._paired_row(
            "B",
            f"deliveries/s, fan-out {fan_out}, {s.b_events} events",
            "dlv/s",
            "≥ 0.50",
            0.50,
            rounds,
            rate=lambda r: (
                _arrival_rate(r["router_receiver"]),
                _arrival_rate(r["baseline_receiver"]),
            ),
            unit="delivery",
            extra=_join(*notes),
        )

    async def _b_router(self, number: int, rport: int, urls: list[str]) -> dict[str, Any]:
        """One round of B against the router: events accepted first, then `serve` dispatches
        and delivers them."""
        async with self.keyspace(f"b{number}") as (prefix, _):
            await self.register(prefix, urls)
            loaded = await self.preload(prefix, self.sizes.b_events)
            expected = loaded["accepted"] * len(urls)
            with contextlib.ExitStack() as router:
                proc, port = self.router(router, f"serve-b{number}", prefix, "serve")
                await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
                # From here on: start-up (imports) is not counted as delivery work.
                cpu, redis_cpu = proc.cpu_seconds(), await self.redis_cpu()
                arrived = (await self.receiver_stats(rport))["count"]
                with self.profiled(proc, "B", first=number == 0):
                    stats = await self.wait_arrivals(rport, expected)
                done = stats["count"] - arrived
                return {
                    "preload": _strip(loaded),
                    "expected": expected,
                    "router_receiver": stats,
                    "router_cpu": _per_unit(cpu, proc.cpu_seconds(), done),
                    "redis_cpu": _per_unit(redis_cpu, await self.redis_cpu(), done),
                    "router_rss": proc.rss_bytes(),
                }

    def _paired_row(
        self,
        scenario: str,
        measurement: str,
        rate_unit: str,
        target: str,
        bound: float,
        rounds: list[dict[str, Any]],
        *,
        rate: Callable[[dict[str, Any]], tuple[float | None, float | None]],
        unit: str,
        extra: str,
    ) -> None:
        """One row for rounds of (router, baseline) pairs: the median of each side's rate,
        and the median of the rounds' ratios, each ratio taken within its own round."""
        ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
        ratio = statistics.median(ratios) if ratios else None
        router_rates = [x for x in (rate(r)[0] for r in rounds) if x is not None]
        base_rates = [x for x in (rate(r)[1] for r in rounds) if x is not None]
        spread = ""
        if len(rounds) > 1:
            spread = f"median of {len(rounds)} rounds, ratios " + ", ".join(_fmt(x) for x in ratios)
        self.add(
            Row(
                scenario,
                measurement,
                statistics.median(router_rates) if router_rates else None,
                rate_unit,
                statistics.median(base_rates) if base_rates else None,
                ratio,
                target,
                ratio is not None and ratio >= bound,
                _join(
                    spread,
                    extra,
                    _cpu_note(
                        _median(r["router_cpu"] for r in rounds),
                        _median(r["redis_cpu"] for r in rounds),
                        _median(r["baseline_cpu"] for r in rounds),
                        unit,
                    ),
                ),
            )
        )

    async def scenario_c(self) -> None:
        s = self.sizes
        with contextlib.ExitStack() as outer:
            rport = await self.receiver(outer)
            async with self.keyspace("c") as (prefix, stack):
                await self.register(prefix, [f"http://127.0.0.1:{rport}/c/0"])
                proc, port = self.router(stack, "serve-c", prefix, "serve")
                await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
                run = await self.loadgen(
                    f"http://127.0.0.1:{port}/webhooks",
                    connections=32,
                    duration=s.c_seconds,
                    rate=s.c_rate,
                    record=True,
                )
                stats = await self.wait_arrivals(rport, run["accepted"])
                arrivals = await self._get(f"http://127.0.0.1:{rport}/_bench/arrivals")
        sends: dict[str, float] = run["sends"]
        first_arrival: dict[str, float] = {}
        for t, event_id in zip(arrivals["t"], arrivals["event_id"], strict=True):
            first_arrival.setdefault(event_id, t)
        latencies = sorted(
            (first_arrival[e] - t) * 1000 for e, t in sends.items() if e in first_arrival
        )
        pct = {p: _percentile(latencies, p) for p in (50, 95, 99, 100)}
        by_second: dict[int, list[float]] = {}
        start = run["first_send"]
        for event_id, t in sends.items():
            if event_id in first_arrival:
                by_second.setdefault(int(t - start), []).append((first_arrival[event_id] - t) * 1e3)
        per_second = {
            sec: {"n": len(v), "p50": _percentile(sorted(v), 50), "p99": _percentile(sorted(v), 99)}
            for sec, v in sorted(by_second.items())
        }
        warm = sorted(
            (first_arrival[e] - t) * 1000
            for e, t in sends.items()
            if e in first_arrival and t - start >= 1.0
        )
        self.report.details["C"] = {
            "loadgen": _strip(run),
            "receiver": stats,
            "matched": len(latencies),
            "latency_ms": pct,
            "achieved_rate": run["accepted_per_s"],
            "per_second": per_second,
        }
        note = (
            f"{len(latencies)}/{run['accepted']} delivered; max {_fmt(pct[100])} ms; "
            f"p99 without the first second {_fmt(_percentile(warm, 99))} ms"
        )
        self.add(Row("C", f"e2e p50 @ {s.c_rate:g} ev/s, fan-out 1", pct[50], "ms"))
        self.add(Row("C", "e2e p95", pct[95], "ms"))
        self.add(
            Row(
                "C",
                "e2e p99",
                pct[99],
                "ms",
                target="≤ 50 ms",
                passed=pct[99] is not None and pct[99] <= 50,
                note=note,
            )
        )

    async def scenario_d(self) -> None:
        s = self.sizes
        fan_out = 10
        rates: dict[int, float] = {}
        details: dict[int, Any] = {}
        with contextlib.ExitStack() as outer:
            rport = await self.receiver(outer)
            for registered in s.d_registered:
                async with self.keyspace(f"d{registered}") as (prefix, _):
                    keys = Keys(prefix)
                    started = time.monotonic()
                    await self.register(
                        prefix,
                        [f"http://127.0.0.1:{rport}/d/{i}" for i in range(fan_out)],
                        unrelated=registered - fan_out,
                        unrelated_url=f"http://127.0.0.1:{rport}/other",
                    )
                    register_s = time.monotonic() - started
                    with contextlib.ExitStack() as stack:
                        # Delivery throttled to one at a time: D measures accept + dispatch.
                        proc, port = self.router(
                            stack,
                            f"serve-d{registered}",
                            prefix,
                            "serve",
                            ROUTER_WORKER_CONCURRENCY=1,
                        )
                        await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
                        run, done = await asyncio.gather(
                            self.loadgen(
                                f"http://127.0.0.1:{port}/webhooks",
                                connections=32,
                                count=s.d_events,
                            ),
                            self._dispatched(keys, s.d_events * fan_out),
                        )
                    elapsed = done - run["first_send"]
                    rates[registered] = run["accepted"] / elapsed
                    details[registered] = {
                        "loadgen": _strip(run),
                        "dispatched_at": done,
                        "elapsed": elapsed,
                        "register_seconds": register_s,
                    }
        self.report.details["D"] = details
        low, high = s.d_registered[0], s.d_registered[-1]
        for registered in s.d_registered:
            last = registered == high
            ratio = _ratio(rates[registered], rates[low]) if registered != low else None
            self.add(
                Row(
                    "D",
                    f"accepted+dispatched ev/s, 10 entitled of {registered:,}",
                    rates[registered],
                    "ev/s",
                    rates[low] if registered != low else None,
                    ratio,
                    "≥ 0.90" if last else "",
                    (ratio >= 0.90) if last and ratio else None,
                )
            )

    async def _dispatched(self, keys: Keys, deliveries: int, timeout: float = 300) -> float:
        """time.time() when the deliveries index holds `deliveries` entries."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.redis.zcard(keys.deliveries) >= deliveries:
                return time.time()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{deliveries} deliveries not created within {timeout:g}s")

    async def scenario_e(self) -> None:
        s = self.sizes
        first, total = s.e_counts
        samples: list[dict[str, Any]] = []
        with contextlib.ExitStack() as outer:
            rport = await self.receiver(outer)
            async with self.keyspace("e") as (prefix, stack):
                await self.register(prefix, [f"http://127.0.0.1:{rport}/e/0"])
                before = await self._used_memory()
                proc, port = self.router(
                    stack,
                    "serve-e",
                    prefix,
                    "serve",
                    ROUTER_RETENTION=s.e_retention,
                    ROUTER_DEDUPE_WINDOW=s.e_retention,
                )
                await wait_http(proc, f"http://127.0.0.1:{port}/readyz")
                accepted = 0
                started = time.monotonic()
                for count in (first, total - first):
                    run = await self.loadgen(
                        f"http://127.0.0.1:{port}/webhooks",
                        connections=32,
                        count=count,
                        rate=s.e_rate,
                    )
                    accepted += run["accepted"]
                    # Sampled as the last event is accepted, while the stream goes on: what
                    # the router holds at that point of a steady flow, backlog included.
                    sample = await self._memory(Keys(prefix), proc)
                    sample |= {
                        "events": accepted,
                        "delivered": (await self.receiver_stats(rport))["count"],
                        "seconds": time.monotonic() - started,
                        "achieved_rate": run["accepted_per_s"],
                    }
                    samples.append(sample)
                final = await self.wait_arrivals(rport, accepted, drained=Keys(prefix))
        self.report.details["E"] = {
            "delivered_in_the_end": final["count"],
            "used_memory_before": before,
            "samples": samples,
            "retention": s.e_retention,
            "rate": s.e_rate,
        }
        a, b = samples
        label = f"{first // 1000}k→{total // 1000}k"
        ratio = _ratio(b["prefix_bytes"], a["prefix_bytes"])
        self.add(
            Row(
                "E",
                f"Redis memory of the run's keys, {label} events",
                b["prefix_bytes"] / 1e6,
                "MB",
                a["prefix_bytes"] / 1e6,
                ratio,
                "≤ 1.5",
                ratio is not None and ratio <= 1.5,
                f"keys {a['prefix_keys']}→{b['prefix_keys']}; retention {s.e_retention}s; "
                f"{final['count']}/{accepted} delivered in the end",
            )
        )
        ratio = _ratio(b["used_memory"] - before, a["used_memory"] - before)
        self.add(
            Row(
                "E",
                f"Redis used_memory growth over the run, {label}",
                (b["used_memory"] - before) / 1e6,
                "MB",
                (a["used_memory"] - before) / 1e6,
                ratio,
                "report",
                None,
                "server-wide INFO used_memory minus its value before the run: the server is "
                "shared, so other clients' keys count too",
            )
        )
        ratio = _ratio(b["router_rss"], a["router_rss"])
        self.add(
            Row(
                "E",
                f"router RSS, {label} events",
                b["router_rss"] / 1e6,
                "MB",
                a["router_rss"] / 1e6,
                ratio,
                "≤ 1.5",
                ratio is not None and ratio <= 1.5,
            )
        )

    async def _idle(self, keys: Keys) -> bool:
        """True when no event awaits dispatch and no delivery awaits an attempt."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.events_stream)
            pipe.xlen(keys.ready_stream)
            pipe.zcard(keys.retry_schedule)
            return not any(await pipe.execute())

    async def _used_memory(self) -> int:
        return int((await self.redis.info("memory"))["used_memory"])

    async def _memory(self, keys: Keys, proc: Proc) -> dict[str, Any]:
        total = count = 0
        batch: list[bytes] = []

        async def measure() -> int:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.memory_usage(key)
                return sum(n or 0 for n in await pipe.execute())

        async for key in self.redis.scan_iter(match=keys.pattern(), count=1000):
            batch.append(key)
            count += 1
            if len(batch) >= 1000:
                total += await measure()
                batch = []
        if batch:
            total += await measure()
        return {
            "prefix_bytes": total,
            "prefix_keys": count,
            "used_memory": await self._used_memory(),
            "router_rss": proc.rss_bytes() or 0,
        }

    async def scenario_f(self) -> None:
        s = self.sizes
        fan_out = 10
        rates: dict[int, float] = {}
        details: dict[int, Any] = {}
        with contextlib.ExitStack() as outer:
            rport = await self.receiver(outer)
            urls = [f"http://127.0.0.1:{rport}/f/{i}" for i in range(fan_out)]
            for workers in (1, 2):
                await self.receiver_reset(rport)
                async with self.keyspace(f"f{workers}") as (prefix, _):
                    await self.register(prefix, urls)
                    loaded = await self.preload(prefix, s.f_events)
                    with contextlib.ExitStack() as stack:
                        for n in range(workers):
                            self.router(stack, f"worker-f{workers}-{n}", prefix, "worker")
                        stats = await self.wait_arrivals(rport, loaded["accepted"] * fan_out)
                rates[workers] = _arrival_rate(stats) or 0.0
                details[workers] = {"preload": _strip(loaded), "receiver": stats}
        self.report.details["F"] = details
        self.add(Row("F", f"deliveries/s, 1 worker process, fan-out {fan_out}", rates[1], "dlv/s"))
        self.add(
            Row(
                "F",
                "deliveries/s, 2 worker processes",
                rates[2],
                "dlv/s",
                rates[1],
                _ratio(rates[2], rates[1]),
                "report",
                None,
                f"{os.cpu_count()} cores shared with receiver",
            )
        )

    # ------------------------------------------------------------------ run
    async def run(self, only: list[str]) -> Report:
        try:
            await self.redis.ping()
            for name in only:
                print(f"--- scenario {name}", flush=True)
                self.report.load[name] = os.getloadavg()[0]
                try:
                    await getattr(self, f"scenario_{name.lower()}")()
                except Exception as exc:  # one failed scenario must not lose the others
                    self.report.errors[name] = f"{type(exc).__name__}: {exc}"
                    print(f"scenario {name} failed: {exc}", file=sys.stderr, flush=True)
        finally:
            await self.redis.aclose()
        return self.report


# ---------------------------------------------------------------------- helpers
def _paired_rounds(repeats: int) -> Iterator[tuple[int, tuple[str, str]]]:
    """Round numbers with the order of their two sides, alternating so that a machine that
    speeds up or slows down during the scenario favours neither side."""
    for number in range(repeats):
        yield number, ("baseline", "router") if number % 2 == 0 else ("router", "baseline")


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _non_2xx_rounds(rounds: list[dict[str, Any]]) -> str:
    return _join(*dict.fromkeys(_non_2xx(r["router"]) for r in rounds))


def _strip(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "sends"}


def _non_2xx(run: dict[str, Any]) -> str:
    other = {k: v for k, v in run["statuses"].items() if k != "202"}
    parts = [f"{v} x {k}" for k, v in other.items()] + [
        f"{v} x {k}" for k, v in run["errors"].items()
    ]
    return ("non-202: " + ", ".join(parts)) if parts else ""


def _per_unit(before: float | None, after: float | None, units: int) -> float | None:
    """CPU microseconds per unit of work between two readings (None if either is missing)."""
    if before is None or after is None or units <= 0:
        return None
    return round((after - before) * 1e6 / units, 1)


def _cpu_note(router: float | None, redis: float | None, base: float | None, unit: str) -> str:
    """The CPU each side spent per unit: unlike the rates, it barely moves with how the
    scheduler shares the two cores between the processes."""
    if router is None or base is None:
        return ""
    redis_part = f" + Redis {redis:.0f}" if redis is not None else ""
    return f"CPU/{unit}: router {router:.0f} µs{redis_part}, baseline {base:.0f} µs"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _arrival_rate(stats: dict[str, Any]) -> float | None:
    if not stats.get("first") or stats["count"] < 2 or stats["last"] <= stats["first"]:
        return None
    return (stats["count"] - 1) / (stats["last"] - stats["first"])


def _delivery_note(stats: dict[str, Any], expected: int) -> str:
    note = f"{stats['count']}/{expected} arrived"
    if stats["unique_webhook_ids"] != stats["count"]:
        note += f", {stats['count'] - stats['unique_webhook_ids']} duplicates"
    return note + (" (stalled)" if stats.get("stalled") else "")


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))
    return values[index]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def _format_row(row: Row) -> str:
    verdict = {True: "PASS", False: "FAIL", None: ""}[row.passed]
    return (
        f"{row.scenario:2} {row.measurement:58} {_fmt(row.value, row.unit):>14} "
        f"{_fmt(row.baseline, row.unit):>14} {_fmt(row.ratio):>6} {row.target:>8} {verdict:4}"
    )


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| | measurement | router | baseline | ratio | target | result | note |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        verdict = {True: "**pass**", False: "**FAIL**", None: ""}[row.passed]
        lines.append(
            f"| {row.scenario} | {row.measurement} | {_fmt(row.value, row.unit)} | "
            f"{_fmt(row.baseline, row.unit)} | {_fmt(row.ratio)} | {row.target} | {verdict} | "
            f"{row.note} |"
        )
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_state() -> str:
    """The measured tree: commit, and whether it had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


async def machine_info(redis_url: str) -> dict[str, Any]:
    client = Redis.from_url(redis_url)
    try:
        server = await client.info("server")
    finally:
        await client.aclose()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": server.get("redis_version"),
        "git": _git_state(),
        "event_loop": "uvloop" if _version("uvloop") != "not installed" else "asyncio",
        "packages": {
            p: _version(p)
            for p in (
                "webhook-router",
                "aiohttp",
                "redis",
                "hiredis",
                "pydantic",
                "pydantic-core",
                "orjson",
                "uvloop",
            )
        },
    }


def render_markdown(
    report: Report,
    machine: dict[str, Any],
    command: str,
    run_id: str,
    sizes: Sizes,
    repeats: int,
) -> str:
    pk = machine["packages"]
    parts = [
        f"# Benchmark run {run_id}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, "
        f"{machine['os']}; Python {machine['python']} ({machine['event_loop']}); "
        f"Redis {machine['redis_server']}; tree {machine['git']}; "
        + ", ".join(f"{k} {v}" for k, v in pk.items())
        + ". Load generator, router, receivers and Redis share the cores.",
        "",
        markdown_table(report.rows),
        "",
        f"Sizes: {', '.join(f'{k}={v}' for k, v in asdict(sizes).items())}. A and B: "
        f"{repeats} rounds of a (baseline, router) pair, in alternating order; each ratio is "
        "taken within its round, and the table gives the medians.",
        "",
        "1-minute load average when each scenario started (other work on the machine shows "
        "here): " + ", ".join(f"{k} {v:.2f}" for k, v in report.load.items()) + ".",
    ]
    if report.errors:
        parts += ["", "## Scenarios that failed to run", ""]
        parts += [f"- {k}: {v}" for k, v in report.errors.items()]
    for name, prof in report.profiles.items():
        parts += ["", f"## Profile of the router during {name} (py-spy, `{prof.get('file')}`)"]
        if "error" in prof:
            parts += ["", f"py-spy failed: {prof['error']}"]
            continue
        parts += ["", f"{prof['samples']} samples. Top frames by own time:", ""]
        parts += [f"{i}. {share:.1%} {frame}" for i, (frame, share) in enumerate(prof["self"], 1)]
        parts += ["", "Project functions by total (inclusive) time:", ""]
        parts += [f"{i}. {share:.1%} {frame}" for i, (frame, share) in enumerate(prof["total"], 1)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark webhook-router against bare aiohttp baselines (scenarios A-F of "
        "the benchmark issue). Starts the router with its real CLI, a receiver process, a load "
        "generator process and the baselines; prints a table and writes "
        "bench/results/<timestamp>.json and .md and bench/results/latest.md. "
        f"Redis: REDIS_URL (default {DEFAULT_REDIS_URL} when unset); each scenario uses its own "
        "ROUTER_KEY_PREFIX and deletes its keys afterwards.",
        epilog="Scenarios: A ingest throughput vs bare aiohttp+pydantic; B deliveries/s at "
        "fan-out 10 vs a bare aiohttp client; C end-to-end latency at a fixed rate; D fan-out "
        "cost with 10 entitled among 10/1k/10k registered; E Redis memory and router RSS after "
        "20k vs 200k events; F one vs two worker processes. Targets: A ≥ 0.60, B ≥ 0.50, "
        "C p99 ≤ 50 ms, D ≥ 0.90, E ≤ 1.5.",
    )
    parser.add_argument("--quick", action="store_true", help="short durations, small counts")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="scenarios to run, e.g. A,C (default: all)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        metavar="N",
        help="rounds of (baseline, router) pairs in A and B, each ratio taken within its round "
        "and the median reported (default: 3, or 1 with --quick)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the router with py-spy during A and B (perturbs those numbers)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        help=f"Redis to run against (default: REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every router process (repeatable), e.g. "
        "ROUTER_SUBSCRIBER_CONCURRENCY=50; recorded with the results",
    )
    args = parser.parse_args(argv)
    try:
        args.router_env = dict(item.split("=", 1) for item in args.router_env)
    except ValueError:
        parser.error("--router-env takes NAME=VALUE")
    if args.repeats < 0:
        parser.error("--repeats takes a positive number of rounds")
    args.only = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (choose from A-F)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"run {bench.run_id} on {args.redis_url}; logs in {bench.logdir}", flush=True)
    machine = asyncio.run(machine_info(args.redis_url))
    started = time.time()
    report = asyncio.run(bench.run(args.only))
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "run_id": bench.run_id,
        "command": command.strip(),
        "redis_url": args.redis_url,
        "seconds": round(time.time() - started, 1),
        "machine": machine,
        "sizes": asdict(bench.sizes),
        "repeats": bench.repeats,
        "rows": [asdict(r) for r in report.rows],
        "details": report.details,
        "profiles": report.profiles,
        "errors": report.errors,
        "load_average": report.load,
        "router_env": args.router_env,
    }
    (RESULTS / f"{bench.run_id}.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    text = render_markdown(
        report, machine, command.strip(), bench.run_id, bench.sizes, bench.repeats
    )
    (RESULTS / f"{bench.run_id}.md").write_text(text)
    (RESULTS / "latest.md").write_text(text)
    print()
    print(markdown_table(report.rows))
    print(f"\nwrote {RESULTS / (bench.run_id + '.md')} ({document['seconds']} s)")
    if report.errors:
        print(f"process logs kept in {bench.logdir}", file=sys.stderr)
        return 1
    shutil.rmtree(bench.logdir, ignore_errors=True)
    return 0
