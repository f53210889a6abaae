"""A real receiving app for delivery tests: an aiohttp server on 127.0.0.1 whose answer is
programmed per path, and which records every request it gets.

    async with Receiver() as receiver:
        receiver.program("/flaky", 500, 500)            # fail twice, then 200 (the default)
        receiver.program("/down", then=500)             # always 500
        receiver.program("/gone", 410)
        receiver.program("/busy", Reply(429, headers={"Retry-After": "1"}))
        receiver.program("/slow", then=Reply(200, delay=1.0))
        ... register receiver.url("/flaky") as a subscriber, post events ...
        hits = await receiver.wait_for("/flaky", 3)
        verify_signature(secret, hits[0])

Each request consumes the next programmed reply of its path; once they are used up, every
further request gets the path's `then` reply (200 unless programmed otherwise).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

DEFAULT_DEADLINE = 10.0


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: a status, headers, a body, after an optional delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as it arrived: path, headers, raw body bytes, monotonic arrival time."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int = 200  # the status the receiver answered with

    @property
    def status_ok(self) -> bool:
        return 200 <= self.answered < 300

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


def _reply(value: Reply | int) -> Reply:
    return value if isinstance(value, Reply) else Reply(value)


class Receiver:
    """A subscriber's endpoint: listens on 127.0.0.1 on a free port until closed."""

    def __init__(self) -> None:
        self._planned: dict[str, deque[Reply]] = defaultdict(deque)
        self._then: dict[str, Reply] = {}
        self._received: list[Received] = []
        self._arrived = asyncio.Condition()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)
        self._flaky: dict[str, tuple[float, random.Random]] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this receiver."""
        return self.base_url + path

    def program(self, path: str, *replies: Reply | int, then: Reply | int = 200) -> None:
        """Answer the next requests to `path` with `replies` in order, and `then` after."""
        self._planned[path] = deque(_reply(r) for r in replies)
        self._then[path] = _reply(then)

    def fail_randomly(self, path: str, probability: float, seed: int = 7) -> None:
        """Answer each request to `path` with 500 with `probability`, else 200."""
        self._flaky[path] = (probability, random.Random(seed))

    def requests(self, path: str | None = None) -> list[Received]:
        """Every request received so far (to `path`, if given), in arrival order."""
        return [r for r in self._received if path is None or r.path == path]

    def peak_concurrency(self, path: str) -> int:
        """The most requests to `path` that were being answered at the same moment."""
        return self._peak[path]

    async def wait_for(
        self, path: str, count: int, deadline: float = DEFAULT_DEADLINE
    ) -> list[Received]:
        """The first `count` requests to `path`, waiting up to `deadline` seconds for them.

        Raises AssertionError naming what did arrive when they do not come in time.
        """

        def enough() -> bool:
            return len(self.requests(path)) >= count

        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(enough), deadline)
            except TimeoutError:
                got = len(self.requests(path))
                raise AssertionError(
                    f"{path}: expected {count} requests within {deadline}s, got {got}"
                ) from None
        return self.requests(path)[:count]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        planned = self._planned[path]
        reply = planned.popleft() if planned else self._then.get(path, Reply())
        if path in self._flaky:
            probability, dice = self._flaky[path]
            reply = Reply(500) if dice.random() < probability else Reply(200)
        record = Received(path, dict(request.headers), body, time.monotonic(), reply.status)
        self._in_flight[path] += 1
        self._peak[path] = max(self._peak[path], self._in_flight[path])
        async with self._arrived:
            self._received.append(record)
            self._arrived.notify_all()
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self._in_flight[path] -= 1
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


def verify_signature(secret: str, received: Received) -> Any:
    """Check `received` with the standardwebhooks library, as a subscriber would.

    Returns the verified payload; raises `WebhookVerificationError` if the signature is bad.
    """
    return Webhook(secret).verify(received.body, received.headers)
