"""A subscriber-bound key never reads or changes another subscriber's data, on any route.

The routes are not listed here: they are read from the `/openapi.json` the app serves, so a
route added later is walked too. Two subscribers, A and B, each have deliveries (dead and
succeeded, with attempts) and a bound key; the walk calls every operation with A's key,
first once per combination of A's and B's ids in its path, then with hypothesis drawing
operations, ids, query parameters and bodies. After every call: the response holds none of
B's ids, URL or secret (except what the request itself sent, as a 404 may echo it), and B's
record, deliveries, attempts, indexes and key are exactly as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core.scopes import OPERATOR_SCOPES
from router.http.context import HISTORY, KEYRING, SUBSCRIBERS
from tests.test_bound_keys import World, bearer, build_world

MAX_EXAMPLES = 300
_PATH_PARAM = re.compile(r"\{([^}]+)\}")
T = TypeVar("T")

Call = tuple[str, str, dict[str, Any], Any]  # method, path, query, JSON body (None: none)


def path_candidates(world: World, operator_key: str) -> dict[str, list[str]]:
    """What each path parameter may be: A's values, B's, and ones nobody has."""
    a, b = world.a, world.b
    return {
        "subscriber_id": [a.id, b.id, "sub_nobody"],
        "delivery_id": [a.dead, a.succeeded, b.dead, b.succeeded],
        "event_id": [world.shared_event, a.own_event, b.own_event],
        "id": [a.key_id, b.key_id, operator_key],
    }


def value_pool(world: World) -> dict[str, list[Any]]:
    """Values for query parameters and body fields, by name; B's wherever one could go."""
    a, b = world.a, world.b
    ids = [a.id, b.id, "sub_nobody"]
    times = ["2000-01-01T00:00:00Z", "2100-01-01T00:00:00+02:00", "yesterday"]
    return {
        "subscriber_id": ids,
        "cursor": [b.dead, b.succeeded, b.own_event, b.id, a.dead, "~"],
        "limit": [1, 2, 50],
        "since": times,
        "until": times,
        "event": ["ContactCreate", "OpportunityCreate"],
        "type": ["ContactCreate"],
        "scope": ["contacts.readonly"],
        "scopes": [list(OPERATOR_SCOPES), ["read_events"], ["contacts.readonly"]],
        "name": ["x"],
        "url": [b.url, "https://other.example.com/hook"],
        "secret": [b.secret],
        "add": [["contacts.write"]],
        "remove": [["contacts.readonly"]],
        "status": ["dead", "succeeded", "paused", "active", "accepted", "failed"],
    }


def fallback(world: World) -> list[Any]:
    return [world.b.id, world.b.dead, "x", None, 1, []]


def fill(path: str, choice: dict[str, str]) -> str:
    return _PATH_PARAM.sub(lambda m: choice[m.group(1)], path)


def body_fields(document: dict[str, Any], operation: dict[str, Any]) -> list[str] | None:
    """The names of the request body's fields; None when the operation takes no body."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    schema = content["schema"]
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    return list(document["components"]["schemas"].get(name, schema).get("properties", {}))


def operations_of(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def exhaustive_calls(
    document: dict[str, Any], world: World, operator_key: str
) -> list[tuple[str, Call]]:
    """Every operation (named by its path template) once per combination of its path
    parameters' candidates, with the query parameters it requires and an empty body."""
    candidates = path_candidates(world, operator_key)
    pool = value_pool(world)
    calls = []
    for method, path, operation in operations_of(document):
        names = _PATH_PARAM.findall(path)
        query = {
            p["name"]: pool.get(p["name"], ["x"])[0]
            for p in operation.get("parameters", [])
            if p["in"] == "query" and p["required"]
        }
        body = None if body_fields(document, operation) is None else {}
        for values in itertools.product(*(candidates.get(n, ["ContactCreate"]) for n in names)):
            filled = fill(path, dict(zip(names, values, strict=True)))
            calls.append((f"{method} {path}", (method, filled, query, body)))
    return calls


def drawn_calls(document: dict[str, Any], world: World, operator_key: str) -> st.SearchStrategy:
    """Hypothesis' calls: any operation, any candidates in its path, any subset of its query
    parameters and body fields with values from the pool."""
    candidates = path_candidates(world, operator_key)
    pool = value_pool(world)
    others = fallback(world)

    @st.composite
    def call(draw: Callable[[st.SearchStrategy[T]], T]) -> Call:
        method, path, operation = draw(st.sampled_from(operations_of(document)))
        choice = {
            n: draw(st.sampled_from(candidates.get(n, ["ContactCreate", world.b.id])))
            for n in _PATH_PARAM.findall(path)
        }
        query = {}
        for param in operation.get("parameters", []):
            if param["in"] == "query" and (param["required"] or draw(st.booleans())):
                query[param["name"]] = draw(st.sampled_from(pool.get(param["name"], others)))
        fields = body_fields(document, operation)
        body = None
        if fields is not None:
            body = {
                f: draw(st.sampled_from(pool.get(f, others))) for f in fields if draw(st.booleans())
            }
        return method, fill(path, choice), query, body

    return call()


class Walker:
    """Makes calls with A's bound key and checks each against B's data."""

    def __init__(self, app: web.Application, client: TestClient, world: World) -> None:
        self.app = app
        self.client = client
        self.world = world
        self.headers = world.a.headers
        b = world.b
        self.needles = [b.id, b.url, b.secret, b.dead, b.succeeded, b.own_event, b.key_id]
        self.succeeded: set[str] = set()
        self.before: dict[str, Any] = {}

    async def snapshot(self) -> dict[str, Any]:
        """Everything of B's the router stores."""
        b, history = self.world.b, self.app[HISTORY]
        sub = await self.app[SUBSCRIBERS].get(b.id)
        key = await self.app[KEYRING].get(b.key_id)
        keys = history.keys
        own = {b.dead.encode(), b.succeeded.encode()}
        indexes = [
            # The dead set holds every subscriber's; only B's entries are B's data.
            [m for m in await history.redis.zrange(index, 0, -1) if m in own]
            for p in keys.all_partitions()
            for index in (keys.subscriber_deliveries(b.id, p), keys.dead(p))
        ]
        return {
            "subscriber": None if sub is None else sub.model_dump(),
            "deliveries": [await history.delivery(d) for d in (b.dead, b.succeeded)],
            "attempts": [await history.attempts(d) for d in (b.dead, b.succeeded)],
            "event": await history.event(b.own_event),
            "indexes": indexes,
            "key": None if key is None else key.model_dump(),
            "token": await self.app[KEYRING].principal_for_token(b.headers["Authorization"][7:]),
        }

    async def check(self, method: str, path: str, query: dict[str, Any], body: Any) -> None:
        url = path + ("?" + urlencode(query) if query else "")
        resp = await self.client.request(method, url, json=body, headers=self.headers)
        text = await resp.text()
        if resp.status < 300:
            self.succeeded.add(f"{method} {path}")
        sent = url + json.dumps(body)
        for needle in self.needles:
            assert needle in sent or needle not in text, (method, url, body, needle, text)
        assert await self.snapshot() == self.before, (method, url, body)
        await self._keep_a_live_key()

    async def _keep_a_live_key(self) -> None:
        """A's key may have deleted, regenerated or narrowed itself: the walk goes on with a
        fresh key of A's holding every scope."""
        keyring = self.app[KEYRING]
        principal = await keyring.principal_for_token(self.headers["Authorization"][7:])
        if principal is None or principal.scopes != frozenset(OPERATOR_SCOPES):
            _, token = await keyring.create("portal", OPERATOR_SCOPES, self.world.a.id)
            self.headers = bearer(token)


def run_in(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[T]) -> T:
    """Runs `coroutine` on the test's loop from hypothesis' thread."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()  # type: ignore[arg-type]


async def test_a_bound_key_never_reads_or_changes_another_subscribers_data(
    app: web.Application, client: TestClient
) -> None:
    world = await build_world(app, client)
    _, operator_key = await _operator_key(app)
    document = await (await client.get("/openapi.json")).json()
    walker = Walker(app, client, world)
    walker.before = await walker.snapshot()

    walked = set()
    for operation, call in exhaustive_calls(document, world, operator_key):
        await walker.check(*call)
        walked.add(operation)
    assert walked == {f"{m} {p}" for m, p, _ in operations_of(document)}

    loop = asyncio.get_running_loop()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn_calls(document, world, operator_key))
    def walk(call: Call) -> None:
        run_in(loop, walker.check(*call))

    await asyncio.to_thread(walk)
    # Not vacuous: A's key did succeed at reading and acting on A's own data.
    for expected in (
        f"GET /v1/subscribers/{world.a.id}",
        f"GET /v1/deliveries/{world.a.dead}",
        f"GET /v1/events/{world.shared_event}",
        f"POST /v1/subscribers/{world.a.id}/secret/rotate",
        "GET /v1/whoami",
    ):
        assert expected in walker.succeeded, expected


async def _operator_key(app: web.Application) -> tuple[str, str]:
    key, token = await app[KEYRING].create("operator", ["read_events"])
    return token, key.id
