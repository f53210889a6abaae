"""The harness the scenarios run in: the processes they start, the Redis keys they use, the
rows they report.

Every scenario starts its own processes (the router through its real CLI, receivers, the load
generator, baselines), uses its own ROUTER_KEY_PREFIX, and deletes that prefix's keys and
stops every process it started when it ends, whatever happened.

The routers run on the run's Redis (`Bench.store`), or on another store for the length of a
`using` block (scenario H's cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench import fixtures
from bench.procs import Proc, child_env, free_port, python_module, router_cli, wait_http
from bench.profile import top_frames
from bench.report import RESULTS, Report, Row, console_line
from bench.stats import per_unit
from bench.stores import Store

ENTITLED_SCOPE = "contacts.readonly"  # ContactCreate's scope
UNRELATED_SCOPE = "calendars.readonly"


# Warnings every router process of the benchmark logs at start-up, by its settings: not
# problems of the run (the benchmark's events are unsigned).
EXPECTED_WARNINGS = ("ROUTER_VERIFY=off",)
IDS = re.compile(r"\b(evt_|dlv_|sub_)[0-9a-z]+")


def log_problems(logdir: Path, names: list[str], keep: int = 5) -> dict[str, Any]:
    """What the router processes called `names` logged at warning level or above (JSON
    lines; but EXPECTED_WARNINGS), and any line that is not JSON (a traceback, a crash):
    counts by level and the first `keep` distinct messages. Empty when they logged nothing
    of the kind."""
    levels: Counter[str] = Counter()
    kinds: Counter[str] = Counter()  # messages with their ids blanked
    first: dict[str, None] = {}
    for name in names:
        try:
            lines = (logdir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
                level, text = entry["level"], str(entry.get("message"))
                if entry.get("exc"):  # the traceback's last line: the exception and its text
                    text += f" [{str(entry['exc']).strip().splitlines()[-1][:200]}]"
            except (orjson.JSONDecodeError, KeyError, TypeError):
                level, text = "other", f"not JSON: {line[:200]}"
            if level not in ("warning", "error", "critical", "other"):
                continue
            if text.startswith(EXPECTED_WARNINGS):
                continue
            levels[level] += 1
            kinds[IDS.sub(r"\1…", f"{level}: {text}"[:300])] += 1
            if len(first) < keep:
                first.setdefault(f"{level}: {text}"[:300])
    if not levels:
        return {}
    return {"levels": dict(levels), "kinds": dict(kinds.most_common(keep)), "first": list(first)}


def strip(run: dict[str, Any]) -> dict[str, Any]:
    """A load generator's report without its per-event times (too long for the results)."""
    return {k: v for k, v in run.items() if k not in ("sends", "accepts")}


class Bench:
    def __init__(self, args: argparse.Namespace, redis_url: str, logdir: Path) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.repeats: int = args.repeats or (1 if args.quick else 3)
        self.own_redis = getattr(args, "redis_url", None) is None  # started for this run
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.token = secrets.token_hex(3)
        self.admin_token = "wra_bench_" + secrets.token_hex(16)
        self.logdir = logdir
        # What the routers run on (see `using`).
        self.store = Store.single(redis_url, args.router_env.get("ROUTER_PARTITIONS"))
        self.report = Report()

    @property
    def redis(self) -> Redis:
        """A client of the run's single Redis (scenarios D and E read it directly)."""
        client = self.store.client
        assert isinstance(client, Redis), "this scenario reads a single Redis"
        return client

    @property
    def redis_url(self) -> str:
        return self.store.url

    @contextlib.contextmanager
    def using(self, store: Store) -> Iterator[Store]:
        """Routers started, keys cleaned up and Redis CPU counted on `store` in the block."""
        previous, self.store = self.store, store
        try:
            yield store
        finally:
            self.store = previous

    # ------------------------------------------------------------------ keys
    def prefix(self, name: str) -> str:
        return f"bench-{self.token}-{name}"

    async def cleanup(self, prefix: str) -> int:
        """Delete every key of `prefix`; returns how many."""
        return await self.store.delete(fixtures.key_pattern(prefix))

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

    async def idle(self, prefix: str) -> bool:
        """True when no event awaits dispatch and no delivery awaits an attempt."""
        return await self.store.idle(prefix)

    async def redis_cpu(self) -> float:
        """The Redis server's CPU seconds so far (INFO cpu; the whole server, so other
        clients' work counts too; on a cluster, every node's)."""
        return await self.store.cpu()

    async def aof_rewrites(self) -> int:
        """The AOF rewrites the Redis server has run since it started (INFO persistence)."""
        return int((await self.redis.info("persistence")).get("aof_rewrites", 0))

    async def used_memory(self) -> int:
        return int((await self.redis.info("memory"))["used_memory"])

    # ------------------------------------------------------------------ processes
    def router(
        self,
        stack: contextlib.ExitStack,
        name: str,
        prefix: str,
        command: str,
        cli: list[str] | None = None,
        **env: Any,
    ) -> tuple[Proc, int]:
        """Start `webhook-router serve|serve --no-workers|worker` on `prefix` (through `cli`
        instead of the installed script, if given)."""
        port = free_port()
        argv = (cli or router_cli()) + command.split()
        if command.startswith("serve"):
            argv += ["--port", str(port)]
        settings = {
            "REDIS_URL": self.redis_url,
            "ROUTER_ADMIN_TOKEN": self.admin_token,
            "ROUTER_ALLOW_PRIVATE_TARGETS": "true",
            "ROUTER_LOG_FORMAT": "json",
            "ROUTER_LOG_LEVEL": "warning",
            "ROUTER_KEY_PREFIX": prefix,
        }
        settings.update({k: str(v) for k, v in env.items()})
        settings.update(self.args.router_env)
        proc = stack.enter_context(Proc(name, argv, child_env(settings), self.logdir))
        return proc, port

    async def serve(
        self, stack: contextlib.ExitStack, name: str, prefix: str, command: str, **env: Any
    ) -> tuple[Proc, str]:
        """Start `serve` (or `serve --no-workers`) and wait until it is ready; returns the
        process and its base URL."""
        proc, port = self.router(stack, name, prefix, command, **env)
        base = f"http://127.0.0.1:{port}"
        await wait_http(proc, f"{base}/readyz")
        return proc, base

    async def server(
        self, stack: contextlib.ExitStack, module: str, ready: str, *args: str
    ) -> tuple[Proc, int]:
        """Start one of the benchmark's HTTP servers (`python -m <module> --port N`) and wait
        until `ready` (a path) answers 200."""
        port = free_port()
        argv = [*python_module(module), "--port", str(port), *args]
        proc = stack.enter_context(
            Proc(module.rpartition(".")[2], argv, child_env({}), self.logdir)
        )
        await wait_http(proc, f"http://127.0.0.1:{port}{ready}")
        return proc, port

    async def receiver(self, stack: contextlib.ExitStack) -> int:
        """Start a receiver (bench/receiver.py); its port."""
        return (await self.server(stack, "bench.receiver", "/_bench/stats"))[1]

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[int]:
        """A receiver for the duration of the block; its port."""
        with contextlib.ExitStack() as stack:
            yield await self.receiver(stack)

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        """One JSON request with the admin token (the receivers ignore it)."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.request(method, url, json=body, headers=headers) as resp,
        ):
            raw = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {url}: {resp.status} {raw[:500]!r}")
            return orjson.loads(raw)

    async def receiver_stats(self, port: int) -> dict[str, Any]:
        return await self.request("GET", f"http://127.0.0.1:{port}/_bench/stats")

    async def receiver_arrivals(self, port: int) -> dict[str, Any]:
        return await self.request("GET", f"http://127.0.0.1:{port}/_bench/arrivals")

    async def receiver_reset(self, port: int) -> None:
        await self.request("POST", f"http://127.0.0.1:{port}/_bench/reset")

    async def run_process(self, name: str, argv: list[str], timeout: float) -> dict[str, Any]:
        """Run a helper process to its end and return the JSON report it wrote."""
        out = self.logdir / f"{name}-{time.monotonic_ns()}.json"
        with Proc(name, [*argv, "--out", str(out)], child_env({}), self.logdir) as proc:
            code = await asyncio.to_thread(proc.wait, timeout)
            if code != 0:
                raise RuntimeError(f"{name} exited with {code}:\n{proc.tail()}")
        return orjson.loads(out.read_bytes())

    async def loadgen(self, url: str, connections: int, **options: float | bool) -> dict[str, Any]:
        """Run bench/loadgen.py against `url`; `options` are its own (duration, count, rate,
        record: max rate unless `rate`)."""
        argv = [*python_module("bench.loadgen"), "--url", url, "--connections", str(connections)]
        for name, value in options.items():
            if value is True:
                argv.append(f"--{name}")
            elif value is not False:
                argv += [f"--{name}", str(value)]
        duration, count, rate = (options.get(k) or 0 for k in ("duration", "count", "rate"))
        expected = duration or (count / rate if rate else count / 200)
        return await self.run_process("loadgen", argv, timeout=expected + 120)

    # ------------------------------------------------------------------ subscribers and work
    async def register(
        self,
        api: str,
        urls: list[str],
        scope: str = ENTITLED_SCOPE,
        payload_filter: dict[str, Any] | None = None,
    ) -> list[str]:
        """Register one subscriber per URL through the router's API at `api` (each with
        `payload_filter`, if given); their ids."""
        ids = []
        for i, url in enumerate(urls):
            body: dict[str, Any] = {"name": f"bench-{i}", "url": url, "scopes": [scope]}
            if payload_filter is not None:
                body["filter"] = payload_filter
            ids.append((await self.request("POST", f"{api}/v1/subscribers", body))["id"])
        return ids

    async def register_unrelated(self, prefix: str, count: int, url: str) -> None:
        """`count` subscribers of a scope the benchmark's events do not need, in bulk."""
        await fixtures.bulk_register(self.redis, prefix, count, url, UNRELATED_SCOPE)

    async def register_filtered_out(
        self, prefix: str, count: int, url: str, filter_for: Callable[[int], dict[str, Any]]
    ) -> None:
        """`count` subscribers entitled by scope to the benchmark's events, in bulk, subscriber
        i with the payload filter `filter_for(i)` (which the events should fail)."""
        await fixtures.bulk_register(
            self.redis, prefix, count, url, ENTITLED_SCOPE, filter_for=filter_for
        )

    async def preload(
        self, prefix: str, events: int, urls: list[str], **env: Any
    ) -> dict[str, Any]:
        """Register a subscriber per URL and accept `events` events through `serve
        --no-workers` (nothing dispatched yet); the load generator's report. Its log is
        `preload-<prefix>.log`."""
        with contextlib.ExitStack() as stack:
            _, api = await self.serve(
                stack, f"preload-{prefix}", prefix, "serve --no-workers", **env
            )
            await self.register(api, urls)
            return await self.loadgen(f"{api}/webhooks", connections=32, count=events)

    async def wait_arrivals(
        self, port: int, expected: int, stall: float = 20.0, drained: str | None = None
    ) -> dict[str, Any]:
        """Wait until the receiver has `expected` arrivals, or none came for `stall` s, or
        (with `drained`, a key prefix) the router has no work left under that prefix."""
        last_count, last_change = -1, time.monotonic()
        while True:
            stats = await self.receiver_stats(port)
            if stats["count"] >= expected:
                return stats
            if drained is not None and await self.idle(drained):
                stats["drained"] = True
                return stats
            if stats["count"] != last_count:
                last_count, last_change = stats["count"], time.monotonic()
            elif time.monotonic() - last_change > stall:
                stats["stalled"] = True
                return stats
            await asyncio.sleep(0.05)

    async def deliver_preloaded(
        self,
        name: str,
        port: int,
        urls: list[str],
        events: int,
        commands: list[str],
        profile_as: str | None = None,
        env: dict[str, Any] | None = None,
        inspect: Callable[[str], Awaitable[Any]] | None = None,
    ) -> dict[str, Any]:
        """Preload `events` events for one subscriber per URL, then start one router process
        per command (`serve` or `worker`) and wait until the receiver on `port` has them all.
        CPU is counted from the moment the processes are up (start-up is not delivery work),
        for the first process and Redis. With `profile_as`, that process is profiled (see
        `profiled`). `env` is extra environment for every router process; `inspect(prefix)`
        is awaited once the deliveries are in, before the processes stop and the keys are
        deleted (its result under "inspect")."""
        await self.receiver_reset(port)
        env = env or {}
        async with self.keyspace(name) as (prefix, _):
            loaded = await self.preload(prefix, events, urls, **env)
            expected = loaded["accepted"] * len(urls)
            with contextlib.ExitStack() as stack:
                procs = [
                    self.router(stack, f"{c}-{name}-{i}", prefix, c, **env)
                    for i, c in enumerate(commands)
                ]
                first, first_port = procs[0]
                if commands[0] == "serve":
                    await wait_http(first, f"http://127.0.0.1:{first_port}/readyz")
                cpu, redis_cpu = first.cpu_seconds(), await self.redis_cpu()
                arrived = (await self.receiver_stats(port))["count"]
                with self.profiled(first, profile_as or "", first=profile_as is not None):
                    stats = await self.wait_arrivals(port, expected)
                done = stats["count"] - arrived
                result = {
                    "preload": strip(loaded),
                    "expected": expected,
                    "receiver": stats,
                    "cpu": per_unit(cpu, first.cpu_seconds(), done),
                    "redis_cpu": per_unit(redis_cpu, await self.redis_cpu(), done),
                    "rss": first.rss_bytes(),
                }
                if inspect is not None:
                    result["inspect"] = await inspect(prefix)
            names = [f"preload-{prefix}", *(proc.name for proc, _ in procs)]
            return result | {"log_problems": log_problems(self.logdir, names)}

    async def fixed_rate(
        self,
        name: str,
        port: int,
        urls: list[str],
        rate: float,
        seconds: float,
        healthy: int,
        connections: int = 256,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Start `serve` on a fresh prefix with one subscriber per URL, offer `rate` events/s
        for `seconds` with the send and 202 times recorded, and wait until the receiver on
        `port` has recorded `healthy` arrivals per accepted event (or none came for 20 s).
        Returns the load generator's report, the receiver's stats and its arrivals."""
        await self.receiver_reset(port)
        async with self.keyspace(name) as (prefix, stack):
            _, api = await self.serve(stack, f"serve-{name}", prefix, "serve")
            await self.register(api, urls)
            load = await self.loadgen(
                f"{api}/webhooks",
                connections=connections,
                duration=seconds,
                rate=rate,
                record=True,
            )
            stats = await self.wait_arrivals(port, load["accepted"] * healthy)
            return load, stats, await self.receiver_arrivals(port)

    # ------------------------------------------------------------------ results
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
        print(console_line(row), flush=True)

    async def run(self, scenarios: dict[str, Any]) -> Report:
        """Run each scenario (letter -> module); one that fails is recorded, not fatal."""
        try:
            await self.redis.ping()
            for letter, module in scenarios.items():
                print(f"--- scenario {letter}", flush=True)
                self.report.load[letter] = os.getloadavg()[0]
                try:
                    await module.run(self, module.QUICK if self.quick else module.FULL)
                except Exception as exc:  # one failed scenario must not lose the others
                    self.report.errors[letter] = f"{type(exc).__name__}: {exc}"
                    print(f"scenario {letter} failed: {exc}", file=sys.stderr, flush=True)
        finally:
            await self.store.aclose()
        return self.report
