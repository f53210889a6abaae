"""A webhook receiver for the benchmark: answers 200 to any POST and records its arrival.

Run as its own process (`python -m bench.receiver --port N`). Every POST path is a
receiver (subscribers point at `/s/<n>`); `GET /_bench/stats` gives counts and the first and
last arrival time, `GET /_bench/arrivals` every arrival (time.time(), `X-Router-Event-Id`,
`webhook-id`), `POST /_bench/reset` forgets them.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import orjson
from aiohttp import web

from bench.loop import use_uvloop


class Arrivals:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.times: list[float] = []
        self.event_ids: list[str] = []
        self.webhook_ids: list[str] = []
        self.by_path: Counter[str] = Counter()


ARRIVALS = web.AppKey("arrivals", Arrivals)


async def receive(request: web.Request) -> web.Response:
    await request.read()
    arrivals = request.app[ARRIVALS]
    arrivals.times.append(time.time())
    arrivals.event_ids.append(request.headers.get("X-Router-Event-Id", ""))
    arrivals.webhook_ids.append(request.headers.get("webhook-id", ""))
    arrivals.by_path[request.path] += 1
    return web.Response(status=200)


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    arrivals = request.app[ARRIVALS]
    times = arrivals.times
    return _json(
        {
            "count": len(times),
            "unique_webhook_ids": len(set(arrivals.webhook_ids)),
            "first": times[0] if times else None,
            "last": times[-1] if times else None,
            "paths": len(arrivals.by_path),
        }
    )


async def arrivals_view(request: web.Request) -> web.Response:
    arrivals = request.app[ARRIVALS]
    return _json(
        {"t": arrivals.times, "event_id": arrivals.event_ids, "webhook_id": arrivals.webhook_ids}
    )


async def reset(request: web.Request) -> web.Response:
    request.app[ARRIVALS].reset()
    return _json({"reset": True})


def create_app() -> web.Application:
    app = web.Application()
    app[ARRIVALS] = Arrivals()
    app.router.add_get("/_bench/stats", stats)
    app.router.add_get("/_bench/arrivals", arrivals_view)
    app.router.add_post("/_bench/reset", reset)
    app.router.add_post("/{tail:.*}", receive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    use_uvloop()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
