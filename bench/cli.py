"""`python -m bench`: the router against the bare limits, side by side, in one run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from bench import wrk
from bench.harness import Bench
from bench.redis_server import describe, own_redis
from bench.report import RESULTS, machine_info, markdown_table, render_markdown
from bench.scenarios import SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    letters = "".join(SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark webhook-router against bare aiohttp baselines (scenarios "
        f"{letters[0]}-{letters[-1]} of the benchmark issue). Starts the router with its real "
        "CLI, a receiver process, a load generator process and the baselines; prints a table "
        "and writes bench/results/<timestamp>.json and .md (and bench/results/latest.md after a "
        "full run of every scenario). "
        "Redis: its own redis-server on a spare loopback port, with appendonly yes, "
        "appendfsync always and no RDB snapshots (as README asks of a deployment), unless "
        "--redis-url is given; each scenario uses its own ROUTER_KEY_PREFIX and deletes its "
        "keys afterwards.",
        epilog="Scenarios: "
        + "; ".join(
            f"{k} {m.__doc__.splitlines()[0][3:].rstrip('.')}" for k, m in SCENARIOS.items()
        )
        + ". Targets (issue 16 for A, B, C and G): A ≥ 0.90, B ≥ 0.65, C p99 ≤ 50 ms at 2,000 "
        "events/s, D ≥ 0.90, E ≤ 1.5, G ≤ 2; H (issue 15) reports ratios, and each cluster "
        "master's share of keys and commands within ±15% of a third.",
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
        help="rounds of every scenario but E; where there is a baseline, each round is a "
        "(baseline, router) pair and its ratio is taken within the round; the table gives the "
        "medians and the spread (default: 3, or 1 with --quick)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the router with py-spy during A and B (perturbs those numbers)",
    )
    parser.add_argument(
        "--redis-url",
        help="run against this Redis instead of starting one (REDIS_URL is not used: the "
        "benchmark's Redis must be chosen explicitly); its persistence settings are recorded",
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
        parser.error(f"unknown scenarios: {', '.join(unknown)} (choose from {letters})")
    return args


async def _describe(redis_url: str) -> dict[str, Any]:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        return await describe(client)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ("python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    logdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(own_redis(logdir))
        code = _run(args, command, redis_url, logdir)
    if code == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    return code


def full_run(args: argparse.Namespace) -> bool:
    """Whether this run replaces bench/results/latest.md: every scenario at its full size."""
    return not args.quick and set(args.only) == set(SCENARIOS)


def _run(args: argparse.Namespace, command: str, redis_url: str, logdir: Path) -> int:
    bench = Bench(args, redis_url, logdir)
    server = asyncio.run(_describe(redis_url))
    own = "its own redis-server" if args.redis_url is None else "the given Redis"
    print(f"run {bench.run_id} on {redis_url} ({own}: {server}); logs in {logdir}", flush=True)
    machine = machine_info(server) | {"wrk": wrk.version()}
    started = time.time()
    scenarios = {letter: SCENARIOS[letter] for letter in args.only}
    report = asyncio.run(bench.run(scenarios))
    document = {
        "run_id": bench.run_id,
        "command": command,
        "redis_url": redis_url,
        "redis": {"own_server": args.redis_url is None, **server},
        "seconds": round(time.time() - started, 1),
        "machine": machine,
        "sizes": {k: asdict(m.QUICK if args.quick else m.FULL) for k, m in scenarios.items()},
        "repeats": bench.repeats,
        "rows": [asdict(r) for r in report.rows],
        "details": report.details,
        "profiles": report.profiles,
        "errors": report.errors,
        "load_average": report.load,
        "router_env": args.router_env,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{bench.run_id}.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    text = render_markdown(report, document)
    (RESULTS / f"{bench.run_id}.md").write_text(text)
    if full_run(args):
        (RESULTS / "latest.md").write_text(text)
    print()
    print(markdown_table(report.rows))
    latest = " and latest.md" if full_run(args) else " (latest.md is left to full runs)"
    print(f"\nwrote {RESULTS / (bench.run_id + '.md')}{latest} ({document['seconds']} s)")
    if report.errors:
        print(f"process logs kept in {logdir}", file=sys.stderr)
        return 1
    return 0
