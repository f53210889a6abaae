"""Instructions per accepted event, or per delivery: counted by valgrind's callgrind, not timed.

On this shared 2-core VM the router's CPU time per event moves by a third from one run to the
next, so a change worth a few percent cannot be seen in scenario A's or B's rates. Callgrind
counts the instructions the router's process executes, which stay the same for the same tree
and inputs whatever else the machine is doing. Each count runs the router under callgrind
twice, once given `--base` events and once `--base` + `--events`; the difference over the extra
events is one event's (or delivery's) cost, start-up and shutdown cancelled out. Both run on a
Redis of their own (as the benchmark's); Redis's own work is not counted (A's and B's notes
have its CPU).

- Ingest (default): `serve --no-workers` accepts the events (16 in flight).
- Delivery (`--delivery`): the events are accepted for 10 subscribers on one receiver first,
  uncounted, then `worker` (dispatch and delivery, as in B) runs under callgrind until the
  receiver has every delivery; the figure is per delivery.
- `--baseline` counts the scenario's baseline instead (A's aiohttp + pydantic app, B's bare
  client): baseline over router is the ratio A or B would show with a core for each side.

    python -m bench.instructions                  # this checkout's router, ingest
    python -m bench.instructions --delivery       # the same, delivery
    python -m bench.instructions --delivery --baseline
    python -m bench.instructions --router /other/checkout/.venv/bin/webhook-router

It needs valgrind (`apt-get install valgrind`) and redis-server. An ingest count takes about a
minute and a half, a delivery count about four: callgrind runs the router some fifty times
slower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path

from bench import loadgen
from bench.harness import Bench
from bench.procs import Proc, child_env, free_port, python_module, router_cli, wait_http
from bench.redis_server import own_redis

IN_FLIGHT = 16
FAN_OUT = 10  # as scenario B
# The same dict layouts in every run, so the same instructions for the same work.
SAME_HASHES = {"PYTHONHASHSEED": "0"}


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def _collected(proc: Proc) -> int:
    """The total callgrind wrote to `proc`'s log as the process exited."""
    found = re.search(r"Collected : (\d+)", proc.log_path.read_text())
    if found is None:
        raise RuntimeError(f"callgrind reported no total:\n{proc.tail()}")
    return int(found[1])


async def _accept_all(proc: Proc, base: str, ready: str, events: int) -> None:
    """Once `ready` answers, post `events` events with bench/loadgen.py's sender; every one
    must be accepted."""
    await wait_http(proc, f"{base}{ready}", timeout=300)
    argv = ["--url", f"{base}/webhooks", "--connections", str(IN_FLIGHT)]
    argv += ["--count", str(events), "--out", os.devnull]  # the report is read here instead
    report = await loadgen.Run(loadgen.parse_args(argv)).run()
    if report["statuses"] != {"202": events} or report["errors"]:
        raise RuntimeError(
            f"not every event was accepted: {report['statuses']}, errors {report['errors']}"
        )


def count_ingest(
    server: list[str], ready: str, events: int, tag: str, logdir: Path, env: dict[str, str]
) -> int:
    """Instructions the HTTP server `server` (argv, given `--port`) executes from start to
    exit, given `events` events once `ready` (a path) answers."""
    port = free_port()
    argv = [*_callgrind(logdir / f"callgrind-{tag}.out"), *server, "--port", str(port)]
    env = env | SAME_HASHES | {"ROUTER_KEY_PREFIX": f"cg{tag}"}  # each count on fresh keys
    with Proc(f"ingest-{tag}", argv, child_env(env), logdir) as proc:
        asyncio.run(_accept_all(proc, f"http://127.0.0.1:{port}", ready, events))
        proc.stop(timeout=300)  # callgrind writes its count as the process exits
    return _collected(proc)


def _serve(router: list[str], redis_url: str) -> tuple[list[str], dict[str, str]]:
    """`serve --no-workers` as scenario A runs it, and its environment."""
    env = {
        "REDIS_URL": redis_url,
        "ROUTER_ADMIN_TOKEN": "bench-instructions-token",
        "ROUTER_LOG_LEVEL": "warning",
        "ROUTER_LOG_FORMAT": "json",
        "ROUTER_VERIFY": "off",  # as in scenario A
    }
    return [*router, "serve", "--no-workers"], env


async def count_delivery(bench: Bench, router: list[str], events: int, tag: str) -> int:
    """Instructions `worker` executes from start to exit, dispatching `events` events (accepted
    beforehand, uncounted) to FAN_OUT subscribers and delivering every one."""
    async with bench.receiving() as port, bench.keyspace(f"cg{tag}") as (prefix, stack):
        urls = [f"http://127.0.0.1:{port}/cg/{i}" for i in range(FAN_OUT)]
        loaded = await bench.preload(prefix, events, urls)
        if loaded["accepted"] != events:
            raise RuntimeError(f"{loaded['accepted']} of {events} events accepted")
        cli = [*_callgrind(bench.logdir / f"callgrind-{tag}.out"), *router]
        proc, _ = bench.router(stack, f"worker-{tag}", prefix, "worker", cli=cli, **SAME_HASHES)
        # Under callgrind, start-up alone takes the better part of a minute.
        stats = await bench.wait_arrivals(port, events * FAN_OUT, stall=300)
        if stats["count"] != events * FAN_OUT:
            raise RuntimeError(f"{stats['count']} of {events * FAN_OUT} deliveries arrived")
        proc.stop(timeout=300)
    return _collected(proc)


async def count_client(bench: Bench, events: int, tag: str) -> int:
    """Instructions B's baseline client executes posting `events` events to FAN_OUT paths."""
    async with bench.receiving() as port:
        urls = ",".join(f"http://127.0.0.1:{port}/cg/{i}" for i in range(FAN_OUT))
        argv = [*_callgrind(bench.logdir / f"callgrind-{tag}.out")]
        argv += [*python_module("bench.baseline_client"), "--urls", urls]
        argv += ["--events", str(events), "--out", os.devnull]
        with Proc(f"client-{tag}", argv, child_env(SAME_HASHES), bench.logdir) as proc:
            code = await asyncio.to_thread(proc.wait, 900)
        if code != 0:
            raise RuntimeError(f"the baseline client exited with {code}:\n{proc.tail()}")
        arrived = (await bench.receiver_stats(port))["count"]
        if arrived != events * FAN_OUT:
            raise RuntimeError(f"{arrived} of {events * FAN_OUT} posts arrived")
    return _collected(proc)


async def _delivery_counts(
    bench: Bench, router: list[str] | None, base: int, events: int
) -> tuple[int, int]:
    # One event loop for both: the harness's Redis client belongs to the loop it was used on.
    if router is None:
        return await count_client(bench, base, "base"), await count_client(
            bench, base + events, "more"
        )
    small = await count_delivery(bench, router, base, "base")
    return small, await count_delivery(bench, router, base + events, "more")


def _bench(redis_url: str, logdir: Path) -> Bench:
    """The benchmark's harness on `redis_url`, with the defaults of a plain `python -m bench`."""
    args = argparse.Namespace(
        quick=False, repeats=1, router_env={}, profile=False, redis_url=redis_url
    )
    return Bench(args, redis_url, logdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description="Instructions the router executes per accepted event, or per delivery "
        "(callgrind).",
    )
    parser.add_argument(
        "--router",
        help="the webhook-router executable to count (default: the one on PATH)",
    )
    parser.add_argument(
        "--delivery",
        action="store_true",
        help=f"count `worker` dispatching and delivering at fan-out {FAN_OUT}, per delivery",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="count the scenario's baseline instead of the router (A's aiohttp + pydantic "
        "app; with --delivery, B's bare client), for a ratio no noise moves",
    )
    parser.add_argument("--events", type=int, help="events counted (2000; 400 with --delivery)")
    parser.add_argument("--base", type=int, help="events in the base run (200; 50 with --delivery)")
    args = parser.parse_args(argv)
    router = [args.router] if args.router else router_cli()
    events = args.events or (400 if args.delivery else 2000)
    base = args.base or (50 if args.delivery else 200)
    counted = "the baseline" if args.baseline else " ".join(router)
    with (
        tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        logdir = Path(tmp)
        redis_url = stack.enter_context(own_redis(logdir))
        if args.delivery:
            bench = _bench(redis_url, logdir)
            delivering = None if args.baseline else router
            small, large = asyncio.run(_delivery_counts(bench, delivering, base, events))
            unit, units = "delivery", events * FAN_OUT
        else:
            if args.baseline:
                server, env, ready = python_module("bench.baseline_ingest"), {}, "/healthz"
            else:
                server, env = _serve(router, redis_url)
                ready = "/readyz"
            small = count_ingest(server, ready, base, "base", logdir, env)
            large = count_ingest(server, ready, base + events, "more", logdir, env)
            unit, units = "accepted event", events
    print(f"{(large - small) / units:,.0f} instructions per {unit} ({counted})")
    print(f"start-up and shutdown with {base} events: {small:,} instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
