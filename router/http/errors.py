"""The one place errors become HTTP responses.

Every error the service returns, on every route, has the seed's envelope
`{"errors": [{"message": ..., "extensions": {"code": ...}}]}`. Handlers raise `ApiError`
(or let pydantic's `ValidationError` escape); `error_middleware` renders it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import ResponseError

from router.storage.client import UNAVAILABLE, refusing_writes

log = logging.getLogger("router.errors")

STORE_RETRY_AFTER = 5


class ErrorExtensions(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    extensions: ErrorExtensions


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    errors: list[ErrorItem]


class ApiError(Exception):
    """An error with an HTTP status and one or more envelope items."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extensions: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        items: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        item: dict[str, Any] = {
            "message": message,
            "extensions": {"code": code, **(extensions or {})},
        }
        item.update(extra or {})
        self.items = items if items is not None else [item]

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps({"errors": self.items}),
            content_type="application/json",
            headers=self.headers,
        )


def unauthenticated(message: str = "Missing or invalid bearer token") -> ApiError:
    return ApiError(
        401,
        "UNAUTHENTICATED",
        message,
        headers={"WWW-Authenticate": 'Bearer realm="webhook-router"'},
    )


def insufficient_scopes(required_scope: str) -> ApiError:
    """Exactly the seed's body: `success: false` sits beside `extensions`, not inside it."""
    return ApiError(
        403,
        "INSUFFICIENT_SCOPES",
        "Insufficient scopes for this operation",
        extensions={"requiredScope": required_scope},
        extra={"success": False},
    )


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, "CONFLICT", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def validation_failed(problems: Iterable[tuple[str, str]]) -> ApiError:
    """422 with one envelope item per (field, message)."""
    items = [
        {
            "message": f"{field}: {message}" if field else message,
            "extensions": {"code": "VALIDATION_FAILED", "field": field},
        }
        for field, message in problems
    ]
    return ApiError(422, "VALIDATION_FAILED", "Validation failed", items=items)


def too_many_requests(message: str, retry_after: int) -> ApiError:
    return ApiError(429, "TOO_MANY_REQUESTS", message, headers={"Retry-After": str(retry_after)})


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query"))


def from_validation_error(exc: ValidationError) -> ApiError:
    """pydantic's errors as 422 items, each naming its field (`events.2`, `url`, ...)."""
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append((_field_path(err["loc"]), msg))
    return validation_failed(problems)


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    410: "GONE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    417: "EXPECTATION_FAILED",
    431: "REQUEST_HEADER_FIELDS_TOO_LARGE",
    422: "VALIDATION_FAILED",
    429: "TOO_MANY_REQUESTS",
    503: "UNAVAILABLE",
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The envelope for a bare HTTP status, with the code that status stands for."""
    code = _HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "BAD_REQUEST")
    return ApiError(status, code, message, headers=headers).response()


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    message = exc.reason if exc.status != 404 else "No such route"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return error_response(exc.status, message, headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every failure in the envelope; a 500 says nothing of the internals."""
    try:
        return await handler(request)
    except Exception as exc:
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise  # a redirect or the like, which aiohttp answers as itself
        return render_error(exc, request.method, _route(request))


def render_error(exc: Exception, method: str, route: str) -> web.Response:
    """`exc`, raised handling `method` on `route` (its template), as the envelope."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, ValidationError):
        return from_validation_error(exc).response()
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return _from_http_exception(exc)
    if isinstance(exc, UNAVAILABLE):
        # Redis unreachable, a slot without a master, a write no replica confirmed: the
        # request may be repeated once the store is back, and says so.
        log.warning("store unavailable on %s %s (%s)", method, route, type(exc).__name__)
        return ApiError(
            503,
            "UNAVAILABLE",
            "The store is unavailable for now; retry later",
            headers={"Retry-After": str(STORE_RETRY_AFTER)},
        ).response()
    if isinstance(exc, ResponseError) and refusing_writes(exc):
        return ApiError(
            503,
            "UNAVAILABLE",
            "The store refuses writes for now; retry later",
            headers={"Retry-After": str(STORE_RETRY_AFTER)},
        ).response()
    log.error("unhandled error on %s %s", method, route, exc_info=exc)
    return ApiError(500, "INTERNAL", "Internal error").response()


def _route(request: web.Request) -> str:
    """The route's template, not the path: a path is the client's to fill."""
    route = request.match_info.route.resource
    return route.canonical if route is not None else "an unmatched route"
