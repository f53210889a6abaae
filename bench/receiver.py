"""A webhook receiver for the benchmark: records every delivery's arrival, and can play a
broken subscriber on some paths.

Run as its own process (`python -m bench.receiver --port N`). What a POST gets depends on
the first segment of its path that names a behaviour:
- `.../hang/...`: no answer; the request is held until the client gives up and closes the
  connection (as a subscriber that never answers, up to the router's delivery timeout);
- `.../fail/...`: 500;
- `.../reset/...`: the body is read, then the connection is reset (TCP RST, no response);
- any other path: 200, and the arrival is recorded.

`GET /_bench/stats` gives the count of recorded arrivals, their first and last time, and how
many requests each broken behaviour got; `GET /_bench/arrivals` every arrival (time.time(),
`X-Router-Event-Id`, `webhook-id`, path); `POST /_bench/reset` forgets them.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import time
from collections import Counter

import orjson
from aiohttp import web

from bench.loop import use_uvloop

BEHAVIOURS = ("hang", "fail", "reset")
HANG_LIMIT = 600.0  # seconds a held request waits at most for its client to leave


class Arrivals:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.times: list[float] = []
        self.event_ids: list[str] = []
        self.webhook_ids: list[str] = []
        self.paths: list[str] = []
        self.behaviours: Counter[str] = Counter()
        # Kept as arrivals come, so that polling the stats costs the receiver nothing.
        self.unique_webhook_ids: set[str] = set()
        self.by_path: Counter[str] = Counter()


ARRIVALS = web.AppKey("arrivals", Arrivals)


def behaviour(path: str) -> str | None:
    return next((part for part in path.split("/") if part in BEHAVIOURS), None)


async def receive(request: web.Request) -> web.StreamResponse:
    await request.read()
    arrivals = request.app[ARRIVALS]
    kind = behaviour(request.path)
    if kind is not None:
        arrivals.behaviours[kind] += 1
        return await BROKEN[kind](request)
    webhook_id = request.headers.get("webhook-id", "")
    arrivals.times.append(time.time())
    arrivals.event_ids.append(request.headers.get("X-Router-Event-Id", ""))
    arrivals.webhook_ids.append(webhook_id)
    arrivals.paths.append(request.path)
    arrivals.unique_webhook_ids.add(webhook_id)
    arrivals.by_path[request.path] += 1
    return web.Response(status=200)


async def _hang(request: web.Request) -> web.StreamResponse:
    deadline = time.monotonic() + HANG_LIMIT
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(0.1)
    return web.Response(status=504)  # nobody is left to read it


async def _fail(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500)


async def _reset(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on, timeout 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the connection is gone


BROKEN = {"hang": _hang, "fail": _fail, "reset": _reset}


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    arrivals = request.app[ARRIVALS]
    times = arrivals.times
    return _json(
        {
            "count": len(times),
            "unique_webhook_ids": len(arrivals.unique_webhook_ids),
            "first": times[0] if times else None,
            "last": times[-1] if times else None,
            "paths": len(arrivals.by_path),
            "broken": dict(arrivals.behaviours),
        }
    )


async def arrivals_view(request: web.Request) -> web.Response:
    arrivals = request.app[ARRIVALS]
    return _json(
        {
            "t": arrivals.times,
            "event_id": arrivals.event_ids,
            "webhook_id": arrivals.webhook_ids,
            "path": arrivals.paths,
        }
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
