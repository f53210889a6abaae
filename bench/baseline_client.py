"""The delivery baseline: a bare aiohttp client POSTing the benchmark's bodies to the same
receivers with as many requests in flight as the router's workers allow (100 for B's ten
subscribers), and nothing else (no Redis, no signing, no bookkeeping). The bodies are built
before the clock starts (the router reads its bodies ready-made from Redis); each request
carries Content-Type and a `webhook-id`, so the receiver can count duplicates as it does for
the router. Run as `python -m bench.baseline_client`; the report (JSON) goes to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter

import aiohttp
import orjson

from bench.loop import use_uvloop
from bench.payload import event_body


async def run(urls: list[str], events: int, concurrency: int) -> dict[str, object]:
    tag = secrets.token_hex(3)
    bodies = [event_body(tag, index) for index in range(events)]
    total = events * len(urls)
    next_item = 0
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.time()
    cpu_started = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_in_flight() -> None:
            nonlocal next_item
            while next_item < total:
                item = next_item
                next_item += 1
                index, target = divmod(item, len(urls))
                headers = {"Content-Type": "application/json", "webhook-id": f"base_{tag}_{item}"}
                try:
                    async with session.post(
                        urls[target], data=bodies[index], headers=headers
                    ) as resp:
                        await resp.read()
                        statuses[str(resp.status)] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1

        await asyncio.gather(*(one_in_flight() for _ in range(concurrency)))
    elapsed = time.time() - started
    return {
        "posts": total,
        "concurrency": concurrency,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "elapsed": elapsed,
        "posts_per_s": total / elapsed if elapsed > 0 else 0.0,
        "cpu_s": time.process_time() - cpu_started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls", required=True, help="comma-separated receiver URLs")
    parser.add_argument("--events", type=int, required=True, help="events (each to every URL)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    loop = use_uvloop()
    report = asyncio.run(run(args.urls.split(","), args.events, args.concurrency))
    report["loop"] = loop
    with open(args.out, "wb") as fh:
        fh.write(orjson.dumps(report))


if __name__ == "__main__":
    main()
