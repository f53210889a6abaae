"""The web UI in a real headless Chromium (Debian's `chromium`, driven by playwright).

The router runs with its workers in this process, on a real port, on its own event loop in a
background thread, so the tests themselves use playwright's synchronous API. Its store is
fakeredis, and also the real Redis of `REDIS_URL` when that is set. Deliveries go to a real
receiver whose answers each test programs. One browser serves the whole module; each test
gets a fresh page (a fresh session storage, so signed out). Module, not session: while
playwright's synchronous API is open its event loop counts as running in the main thread,
and the asyncio tests of later modules could not start theirs.

With `UI_SCREENSHOTS=<dir>` the tests save a PNG of each page there (the README's are in
docs/screenshots/).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import pytest
from aiohttp import web
from redis.asyncio import Redis

from router.http.app import create_app
from tests.conftest import ADMIN_TOKEN, REAL_REDIS_URL, delete_keys_sync, make_settings
from tests.payloads import encode, ingest_path, platform_event
from tests.receivers import Receiver

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = Path("/usr/bin/chromium")
DEADLINE = 10.0
T = TypeVar("T")


class LiveRouter:
    """The router (with its workers) and a receiver, serving on 127.0.0.1 from a thread."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.key_prefix = "t" + uuid.uuid4().hex[:12]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.receiver = Receiver()
        self.base_url = ""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the router's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        await self.receiver.__aenter__()
        if self.store == "fakeredis":
            self.redis: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        else:
            self.redis = Redis.from_url(REAL_REDIS_URL)
        settings = make_settings(
            self.key_prefix,
            retry_schedule=(0.1, 0.1),
            breaker_threshold=1000,
            reclaim_after=2,
            delivery_timeout=2,
        )
        self.app = create_app(settings, redis=self.redis, run_workers=True)
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if self.store == "redis" and REAL_REDIS_URL:
            delete_keys_sync(REAL_REDIS_URL, self.key_prefix)

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.receiver.__aexit__(None, None, None)
        await self.redis.aclose()

    # ------------------------------------------------------------- driving it

    def api(
        self, method: str, path: str, body: Any = None, *, token: str = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        """One API call as the CLI makes it: (status, decoded JSON body or None)."""
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, answer = self.api(method, path, body)
        assert status == expect, (method, path, status, answer)
        return answer

    def subscribe(self, name: str, path: str, scopes: list[str], **fields: Any) -> dict[str, Any]:
        """A subscriber delivering to the receiver's `path`."""
        body = {"name": name, "url": self.receiver.url(path), "scopes": scopes, **fields}
        return self.ok("POST", "/v1/subscribers", body, 201)

    def publish(self, event: str, **changes: Any) -> str:
        """Posts `event` as the platform does; returns its event id."""
        request = urllib.request.Request(
            self.base_url + ingest_path(event),
            method="POST",
            data=encode(platform_event(event, **changes)),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            return json.loads(response.read())["event_id"]

    def bound_token(self, subscriber_id: str, *scopes: str) -> str:
        """A new API key's token, bound to `subscriber_id`, issued as the README says."""
        body = {
            "name": "billing-sync-portal",
            "scopes": list(scopes),
            "subscriber_id": subscriber_id,
        }
        return self.ok("POST", "/v1/api-keys", body, 201)["token"]

    def delivery_of(self, event_id: str, subscriber_id: str) -> str:
        event = until(
            lambda: self.ok("GET", f"/v1/events/{event_id}"),
            lambda e: any(d["subscriber_id"] == subscriber_id for d in e["deliveries"]),
        )
        return next(d["id"] for d in event["deliveries"] if d["subscriber_id"] == subscriber_id)

    def settled(self, delivery_id: str, status: str) -> dict[str, Any]:
        return until(
            lambda: self.ok("GET", f"/v1/deliveries/{delivery_id}"),
            lambda d: d["status"] == status,
        )


def until(read: Callable[[], T], done: Callable[[T], bool], deadline: float = DEADLINE) -> T:
    """Polls `read` until `done(value)`; fails with the last value after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"not reached within {deadline}s; last seen: {value}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module", params=["fakeredis", "redis"])
def live(request: pytest.FixtureRequest) -> Iterator[LiveRouter]:
    if request.param == "redis" and not REAL_REDIS_URL:
        pytest.skip("REDIS_URL is not set: real-Redis variant skipped")
    router = LiveRouter(request.param)
    router.start()
    try:
        yield router
    finally:
        router.stop()


class Console:
    """A browser tab on the UI, recording the page's errors (a CSP violation is one)."""

    def __init__(self, page: Any, live: LiveRouter) -> None:
        self.page = page
        self.live = live
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    def open(self, hash_route: str = "") -> None:
        self.page.goto(f"{self.live.base_url}/ui/{hash_route}")

    def sign_in(self, token: str = ADMIN_TOKEN) -> None:
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_label("API token").press("Enter")

    def go(self, hash_route: str) -> None:
        self.page.evaluate("route => { window.location.hash = route; }", hash_route)

    def shoot(self, name: str, settle_ms: int = 0) -> None:
        """Saves the page as `name`.png in $UI_SCREENSHOTS, after `settle_ms` (a chart gathering
        points); does nothing when that is unset."""
        folder = os.environ.get("UI_SCREENSHOTS")
        if folder and self.live.store == "fakeredis":
            self.page.wait_for_timeout(settle_ms)
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.fixture
def console(browser: Any, live: LiveRouter) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(DEADLINE * 1000)
    tab = Console(page, live)
    yield tab
    context.close()
    # 401/404 answers the page asked for show as console errors of failed loads; the rest
    # (an exception, a refused inline script or style) are bugs.
    unexpected = [e for e in tab.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected
