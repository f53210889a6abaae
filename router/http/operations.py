"""Declares the HTTP operations: method, path, required operator scope and pydantic models.

Each API module owns one `Resource` and decorates its handlers with it. The declaration is
the single source for three things: routing (`add_routes`), authorisation (`router.http.auth`
reads `Operation.scope` and `Operation.bound`), and the OpenAPI document (`router.openapi`).
Handlers never parse JSON themselves: they receive validated `body` / `query` models and
return a model.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel

from router.http.context import SETTINGS
from router.http.errors import ApiError, bad_request, error_response

HandlerFn = Callable[..., Awaitable[BaseModel | web.StreamResponse]]

# `scope=ANY_TOKEN`: any live token may call the operation, whatever scopes it holds.
ANY_TOKEN: Final = "*"

# What a subscriber-bound key may do with an operation (`router.http.auth` enforces it):
#   "deny"             refused (403 SUBSCRIBER_BOUND), the default, so a new route that does
#                      not decide cannot leak another subscriber's data;
#   "subscriber_path"  allowed only when the path's `{subscriber_id}` is the key's subscriber,
#                      else 404 as if no such subscriber existed;
#   "filter"           allowed; the handler narrows what it reads and changes to
#                      `bound_subscriber(request)` (404 for another subscriber's record);
#   "open"             allowed; the operation holds no subscriber's data.
BoundAccess = Literal["deny", "subscriber_path", "filter", "open"]


@dataclass(frozen=True)
class Operation:
    """One route of the HTTP surface."""

    method: str
    path: str
    handler: HandlerFn
    summary: str
    tag: str
    scope: str | None  # operator scope the bearer token must hold; None = no token needed
    bound: BoundAccess = "deny"  # what a subscriber-bound key may do (see BoundAccess)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    extra_responses: dict[int, str] = field(default_factory=dict)
    # A body the handler reads itself (raw bytes kept), declared for the OpenAPI document only.
    documented_body: type[BaseModel] | None = None
    # False: served but left out of the OpenAPI document (the web UI's files, which are no API).
    documented: bool = True


def render(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A model as a JSON response (RFC 3339 times and all, as pydantic serialises them)."""
    return web.Response(
        status=status,
        body=model.__pydantic_serializer__.to_json(model),
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request) -> bytes:
    """The raw request body: 413 over `ROUTER_MAX_BODY_BYTES` (checked against Content-Length
    before reading), 408 if the client trickles it slower than `ROUTER_CLIENT_TIMEOUT`."""
    settings = request.app[SETTINGS]
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Body is larger than {limit} bytes")
    try:
        if request.content.is_eof():  # already buffered in full (the common, small case)
            return await request.read()
        async with asyncio.timeout(settings.client_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, "REQUEST_TIMEOUT", "Request body not received in time") from None
    except (HttpProcessingError, RequestPayloadError):
        # A body the HTTP layer cannot decode (a corrupt `Content-Encoding: gzip` stream, a
        # broken chunk): the client's error, not ours.
        raise bad_request(
            "Request body could not be decoded (Content-Encoding or framing)"
        ) from None
    except ConnectionError:
        # The client left before sending the whole body. Nobody reads this answer; it must
        # not be reported (or counted) as the store being unavailable.
        raise bad_request("Request body incomplete: the connection closed") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; empty means `{}`. 400 if it is not JSON."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object")
    return data


class Resource:
    """The operations of one API resource (one noun and its verbs)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []
        self._handlers: list[web.Handler] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        scope: str | None,
        bound: BoundAccess = "deny",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        extra_responses: dict[int, str] | None = None,
        documented_body: type[BaseModel] | None = None,
        documented: bool = True,
    ) -> Callable[[HandlerFn], web.Handler]:
        """Decorate `async def handler(request, *, body=..., query=...)`.

        The handler returns a model (rendered with `status`) or a ready response.
        """

        def decorate(fn: HandlerFn) -> web.Handler:
            op = Operation(
                method=method,
                path=path,
                handler=fn,
                summary=summary,
                tag=self.tag,
                scope=scope,
                bound=bound,
                body=body,
                query=query,
                response=response,
                status=status,
                errors=errors,
                extra_responses=extra_responses or {},
                documented_body=documented_body,
                documented=documented,
            )

            @functools.wraps(fn)
            async def handle(request: web.Request) -> web.StreamResponse:
                kwargs: dict[str, Any] = {}
                if op.query is not None:
                    kwargs["query"] = op.query.model_validate(dict(request.query))
                if op.body is not None:
                    kwargs["body"] = op.body.model_validate(await read_json_object(request))
                result = await fn(request, **kwargs)
                if isinstance(result, web.StreamResponse):
                    return result
                return render(result, op.status)

            handle.operation = op  # type: ignore[attr-defined]  # read by auth middleware
            self.operations.append(op)
            self._handlers.append(handle)
            return handle

        return decorate

    def get(self, path: str, **kw: Any) -> Callable[[HandlerFn], web.Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[HandlerFn], web.Handler]:
        return self.route("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[HandlerFn], web.Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[HandlerFn], web.Handler]:
        return self.route("DELETE", path, **kw)

    def add_routes(self, app: web.Application) -> None:
        for op, handle in zip(self.operations, self._handlers, strict=True):
            app.router.add_route(op.method, op.path, handle, expect_handler=expect_continue)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The `Expect` header, answered before the route's middleware run (aiohttp calls this
    first): `100-continue` as aiohttp does, anything else `unmet_expectation`."""
    if (refused := unmet_expectation(request)) is not None:
        return refused
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    return None


def unmet_expectation(request: web.BaseRequest) -> web.Response | None:
    """417 in the envelope, quoting nothing, for an HTTP/1.1 `Expect` other than
    `100-continue`; None otherwise. (aiohttp's default answers it in `text/plain` quoting
    the header, and fails with a 500 when the header is not UTF-8.)"""
    expect = request.headers.get(hdrs.EXPECT)
    if request.version != HttpVersion11 or not expect or expect.lower() == "100-continue":
        return None
    return error_response(417, "Expect: only 100-continue is supported")


def operation_of(request: web.Request) -> Operation | None:
    """The declared operation a request was routed to (None for unmatched routes)."""
    return operation_of_handler(request.match_info.handler)


def operation_of_handler(handler: object) -> Operation | None:
    """The operation a route's handler was declared with (None for aiohttp's own)."""
    return getattr(handler, "operation", None)
