"""`python -m bench`: the router against the bare limits, side by side, in one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

import orjson
from redis.asyncio import Redis

from bench.harness import Bench
from bench.report import RESULTS, machine_info, markdown_table, render_markdown
from bench.scenarios import SCENARIOS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    letters = "".join(SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark webhook-router against bare aiohttp baselines (scenarios "
        f"{letters[0]}-{letters[-1]} of the benchmark issue). Starts the router with its real "
        "CLI, a receiver process, a load generator process and the baselines; prints a table "
        "and writes bench/results/<timestamp>.json and .md and bench/results/latest.md. "
        f"Redis: REDIS_URL (default {DEFAULT_REDIS_URL} when unset); each scenario uses its own "
        "ROUTER_KEY_PREFIX and deletes its keys afterwards.",
        epilog="Scenarios: "
        + "; ".join(
            f"{k} {m.__doc__.splitlines()[0][3:].rstrip('.')}" for k, m in SCENARIOS.items()
        ),
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
        parser.error(f"unknown scenarios: {', '.join(unknown)} (choose from {letters})")
    return args


async def _server_info(redis_url: str) -> dict[str, Any]:
    client = Redis.from_url(redis_url)
    try:
        return await client.info("server")
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ("python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    bench = Bench(args, args.redis_url)
    print(f"run {bench.run_id} on {args.redis_url}; logs in {bench.logdir}", flush=True)
    machine = machine_info(asyncio.run(_server_info(args.redis_url)))
    started = time.time()
    scenarios = {letter: SCENARIOS[letter] for letter in args.only}
    report = asyncio.run(bench.run(scenarios))
    document = {
        "run_id": bench.run_id,
        "command": command,
        "redis_url": args.redis_url,
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
    (RESULTS / "latest.md").write_text(text)
    print()
    print(markdown_table(report.rows))
    print(f"\nwrote {RESULTS / (bench.run_id + '.md')} ({document['seconds']} s)")
    if report.errors:
        print(f"process logs kept in {bench.logdir}", file=sys.stderr)
        return 1
    shutil.rmtree(bench.logdir, ignore_errors=True)
    return 0
