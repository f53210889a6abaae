"""A webhook receiver process for the fault suite: records every request, then behaves as told.

    python receiver.py --port 9001 --out deliveries.jsonl

`POST /{marker}/{behaviour}` appends one JSON line per request to `--out` *before* answering:
`{"t", "event_id", "webhook_id", "attempt", "marker", "behaviour", "status"}` where `t` is the
arrival time (epoch seconds), `event_id` comes from `X-Router-Event-Id`, and `status` is what the
receiver answers (null when it answers nothing: hang, reset). Behaviours:

- `ok` 200; `fail1` 500 on attempt 1 then 200; `flaky` 500 or 200 at random, even odds, on
  attempts before FLAKY_UNTIL, then 200; `500`; `429` with `Retry-After: 2`; `301` to
  `/{marker}/ok`; `410`; `hang` (never answers); `reset` (TCP RST); `huge` (200 with a 50 MB body).

Lines are appended with one `os.write` on an O_APPEND descriptor each, so a reader polling the
file never sees half a line from this process. `GET /healthz` answers 200 once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import struct
import time

from aiohttp import web

HUGE_BYTES = 50 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)
# `flaky` answers 200 from this attempt on: a subscriber retrying up to 20 times (the most a
# schedule allows) then never runs out of attempts, which at even odds one delivery in 2**21
# would (1 % of the runs of a 10,000-event scenario with two subscribers); reached by one
# delivery in 2**15, the cap leaves the failures random.
FLAKY_UNTIL = 16
PLANNED_STATUS = {
    "ok": 200,
    "500": 500,
    "429": 429,
    "301": 301,
    "410": 410,
    "hang": None,
    "reset": None,
    "huge": 200,
}


def build_app(out_path: str) -> web.Application:
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(request: web.Request, status: int | None) -> None:
        line = {
            "t": time.time(),
            "event_id": request.headers.get("X-Router-Event-Id"),
            "webhook_id": request.headers.get("webhook-id"),
            "attempt": int(request.headers.get("X-Router-Attempt", "0")),
            "marker": request.match_info["marker"],
            "behaviour": request.match_info["behaviour"],
            "status": status,
        }
        os.write(fd, (json.dumps(line) + "\n").encode())

    async def deliver(request: web.Request) -> web.StreamResponse:
        await request.read()
        behaviour = request.match_info["behaviour"]
        if behaviour == "fail1":
            status = 500 if request.headers.get("X-Router-Attempt") == "1" else 200
        elif behaviour == "flaky":
            attempt = int(request.headers.get("X-Router-Attempt", "0"))
            status = 500 if attempt < FLAKY_UNTIL and random.random() < 0.5 else 200
        elif behaviour in PLANNED_STATUS:
            status = PLANNED_STATUS[behaviour]
        else:
            raise web.HTTPNotFound(text=f"unknown behaviour {behaviour}")
        record(request, status)
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if behaviour == "reset":
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:  # linger 0 turns close() into a RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if behaviour == "huge":
            resp = web.StreamResponse(status=200)
            resp.content_length = HUGE_BYTES
            await resp.prepare(request)
            try:
                for _ in range(HUGE_BYTES // len(CHUNK)):
                    await resp.write(CHUNK)
            except (ConnectionError, RuntimeError):
                pass  # the router reads 4 KiB and hangs up: that is the point
            return resp
        headers = {}
        if status == 429:
            headers["Retry-After"] = "2"
        if status == 301:
            headers["Location"] = f"/{request.match_info['marker']}/ok"
        assert status is not None
        return web.Response(status=status, text="receiver says hi", headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/{marker}/{behaviour}", deliver)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # A reset or a 50 MB answer cut short makes aiohttp log connection errors; they are expected.
    logging.basicConfig(level=logging.CRITICAL)
    web.run_app(build_app(args.out), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
