"""How `serve` listens: the aiohttp runner, with low-level HTTP errors in the envelope.

A request aiohttp cannot parse (a malformed request line or header, one too long) never
reaches the app's middleware: aiohttp answers it itself, in `text/plain`, and logs the
exception, whose text quotes the raw bytes — an `Authorization` header and body fragments
included. Here such a request is answered in the error envelope like every other error,
and logged as one line that names the error's kind and nothing the client sent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo

from router.http.errors import error_middleware, error_response
from router.http.operations import operation_of_handler, unmet_expectation
from router.logs import safe_traceback

log = logging.getLogger("router.server")


# What a client's malformed request raises in aiohttp: named in one line, no traceback.
_CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError)


class ConnectionLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What aiohttp's connection handlers log through (`handler_args={"logger": ...}`, so
    every server of the app uses it, test servers included): a client's malformed request
    is one warning naming its kind; any other exception keeps its frames, its text
    withheld."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("router.server"), {})

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_ERRORS):
            # A body the client framed or encoded wrongly, met again when the connection
            # discards what is left of it: the client's error, not an error of the service.
            level = min(level, logging.WARNING)
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        exc = kwargs.pop("exc_info", None)
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_ERRORS):
            msg = f"{msg} ({type(exc).__name__})"
        elif isinstance(exc, BaseException):
            # The traceback joins the format string: a `%` in a quoted source line would
            # otherwise break the record (and logging then prints it raw to stderr).
            trace = safe_traceback((type(exc), exc, exc.__traceback__)).replace("%", "%%")
            msg = f"{msg}\n{trace}"
        return msg, kwargs


class EnvelopeRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope for an error aiohttp met before (or outside) the app; `message` and
        `exc` quote the request, so neither is logged nor echoed."""
        kind = type(exc).__name__ if exc is not None else "error"
        # Scanners and TLS handshakes on the plain port are noise, as aiohttp itself judges.
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
        if status >= 500 and exc is not None:
            self.logger.log(level, "error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.log(level, "refused a malformed HTTP request from %s (%s)", request.remote, kind)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; no error response can follow")
        if status >= 500:
            text = "Internal error"
        elif isinstance(exc, LineTooLong):
            text = "Request line or a header is too long"
        else:
            text = "Malformed HTTP request (request line or headers)"
        response = error_response(status, text)
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def _expectation_first(handler: _Handler) -> _Handler:
    """`handler` (the app's), refusing an unmet `Expect` before routing: on a path no route
    declares, aiohttp's own expect handler would answer it."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if (refused := unmet_expectation(request)) is not None:
            return refused
        return await handler(request)

    return handle


INGEST_PATH = "/webhooks"


def _ingest_route(app: web.Application) -> AbstractRoute | None:
    """The app's `POST /webhooks` route, if it has one; it must need no credentials (on the
    short path no middleware runs but the error envelope's)."""
    for route in app.router.routes():
        resource = route.resource
        if route.method == "POST" and resource is not None and resource.canonical == INGEST_PATH:
            op = operation_of_handler(route.handler)
            if op is None or op.scope is not None:
                raise RuntimeError(f"POST {INGEST_PATH} must be declared with scope=None")
            return route
    return None


def _ingest_first(app: web.Application, handler: _Handler) -> _Handler:
    """`handler` (the app's), with `POST /webhooks` handed to its route directly.

    Ingest is the hot path, and aiohttp's routing and middleware chain (resolving the path
    among every route, three middleware layers) cost it about 20k of 480k instructions per
    event (`python -m bench.instructions`). Its route needs no credentials, so of the
    middleware only the error envelope applies, and it is applied here. Anything else —
    another method or path, a query string, an `Expect` header — takes the app's way.
    """
    route = _ingest_route(app)
    if route is None:
        return handler
    ingest = route.handler

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if (
            request.method == hdrs.METH_POST
            and request.raw_path == INGEST_PATH
            and hdrs.EXPECT not in request.headers
        ):
            match_info = UrlMappingMatchInfo({}, route)
            match_info.add_app(app)
            match_info.freeze()
            request._match_info = match_info  # type: ignore[attr-defined]  # as the app does
            return await error_middleware(request, ingest)  # type: ignore[arg-type]
        return await handler(request)

    return handle


class RouterRunner(web.AppRunner):
    """An `AppRunner` whose connections answer low-level errors in the envelope, and hand
    ingest to its route without the app's routing (`_ingest_first`)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same object, built by aiohttp with all its settings; only how it makes each
        # connection's handler, and what runs before the app, change.
        server.__class__ = _EnvelopeServer
        handler = _ingest_first(self.app, server.request_handler)
        server.request_handler = _expectation_first(handler)
        return server


async def serve_until_stopped(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    keepalive_timeout: float,
    reuse_port: bool = False,
    **handler_args: Any,
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully (the app's cleanup
    drains its workers)."""
    runner = RouterRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=keepalive_timeout,
        handle_signals=False,
        **handler_args,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        await stop.wait()
        log.info("draining: finishing attempts in flight")
    finally:
        await runner.cleanup()
