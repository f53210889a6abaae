"""Instructions per accepted event: ingest counted by valgrind's callgrind, not timed.

On this shared 2-core VM the router's CPU time per event moves by a third from one run to the
next, so a change to ingest worth a few percent cannot be seen in scenario A's rates.
Callgrind counts the instructions the router's process executes, which stay the same for the
same tree and inputs whatever else the machine is doing. `serve --no-workers` runs under
callgrind twice, on a Redis of its own (as the benchmark's), once given `--base` events and
once `--base` + `--events`; the difference over `--events` is one event's cost, start-up and
shutdown cancelled out. Redis's own work is not counted (A's note has its CPU per event).

    python -m bench.instructions                  # this checkout's router
    python -m bench.instructions --router /other/checkout/.venv/bin/webhook-router

It needs valgrind (`apt-get install valgrind`) and redis-server. Each count takes about half a
minute: callgrind runs the router some fifty times slower.
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
from bench.procs import Proc, child_env, free_port, router_cli, wait_http
from bench.redis_server import own_redis

IN_FLIGHT = 16


async def _accept_all(proc: Proc, base: str, events: int) -> None:
    """Once `serve` is ready, post `events` events with bench/loadgen.py's sender; every one
    must be accepted."""
    await wait_http(proc, f"{base}/readyz", timeout=300)
    argv = ["--url", f"{base}/webhooks", "--connections", str(IN_FLIGHT)]
    argv += ["--count", str(events), "--out", os.devnull]  # the report is read here instead
    report = await loadgen.Run(loadgen.parse_args(argv)).run()
    if report["statuses"] != {"202": events} or report["errors"]:
        raise RuntimeError(
            f"not every event was accepted: {report['statuses']}, errors {report['errors']}"
        )


def count(router: list[str], redis_url: str, events: int, tag: str, logdir: Path) -> int:
    """Instructions `serve --no-workers` executes from start to exit, given `events` events."""
    port = free_port()
    out = logdir / f"callgrind-{tag}.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *router]
    argv += ["serve", "--no-workers", "--port", str(port)]
    env = child_env(
        {
            "REDIS_URL": redis_url,
            "ROUTER_ADMIN_TOKEN": "bench-instructions-token",
            "ROUTER_KEY_PREFIX": f"cg{tag}",
            "ROUTER_LOG_LEVEL": "warning",
            "ROUTER_LOG_FORMAT": "json",
            "ROUTER_VERIFY": "off",  # as in scenario A
            "PYTHONHASHSEED": "0",  # the same dict layouts, so the same instructions
        }
    )
    with Proc(f"serve-{tag}", argv, env, logdir) as proc:
        asyncio.run(_accept_all(proc, f"http://127.0.0.1:{port}", events))
        proc.stop(timeout=300)  # callgrind writes its count as the router exits
    found = re.search(r"Collected : (\d+)", proc.log_path.read_text())
    if found is None:
        raise RuntimeError(f"callgrind reported no total:\n{proc.tail()}")
    return int(found[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description="Instructions the router executes per accepted event (callgrind).",
    )
    parser.add_argument(
        "--router",
        help="the webhook-router executable to count (default: the one on PATH)",
    )
    parser.add_argument("--events", type=int, default=2000, help="events counted (2000)")
    parser.add_argument("--base", type=int, default=200, help="events in the base run (200)")
    args = parser.parse_args(argv)
    router = [args.router] if args.router else router_cli()
    with (
        tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        logdir = Path(tmp)
        redis_url = stack.enter_context(own_redis(logdir))
        small = count(router, redis_url, args.base, "base", logdir)
        large = count(router, redis_url, args.base + args.events, "more", logdir)
    per_event = (large - small) / args.events
    print(f"{per_event:,.0f} instructions per accepted event ({' '.join(router)})")
    print(f"start-up and shutdown with {args.base} events: {small:,} instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
