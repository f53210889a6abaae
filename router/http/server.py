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

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from router.http.errors import error_response
from router.http.fast_ingest import IngestProtocol, ingest_route_declared
from router.http.operations import unmet_expectation
from router.logs import safe_traceback

log = logging.getLogger("router.server")

DEFAULT_KEEPALIVE_TIMEOUT = 3630.0  # aiohttp's RequestHandler's own default


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


class RouterServer(web.Server):
    """aiohttp's low-level server, as `RouterRunner` sets it up: each connection starts on
    `IngestProtocol` when the app takes ingest (`router.http.fast_ingest`), and is handed to
    an `EnvelopeRequestHandler` for anything else."""

    fast_connections: set[IngestProtocol]
    ingest_app: web.Application | None

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self.ingest_app is None:
            return self.aiohttp_handler()
        keepalive = self._kwargs.get("keepalive_timeout", DEFAULT_KEEPALIVE_TIMEOUT)
        return IngestProtocol(self, self.ingest_app, keepalive)

    def aiohttp_handler(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for connection in list(self.fast_connections):
            connection.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        fast = [connection.shutdown(timeout) for connection in list(self.fast_connections)]
        await asyncio.gather(super().shutdown(timeout), *fast)
        self.fast_connections.clear()


_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def _expectation_first(handler: _Handler) -> _Handler:
    """`handler` (the app's), refusing an unmet `Expect` before routing: on a path no route
    declares, aiohttp's own expect handler would answer it."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if (refused := unmet_expectation(request)) is not None:
            return refused
        return await handler(request)

    return handle


class RouterRunner(web.AppRunner):
    """An `AppRunner` whose connections take ingest below aiohttp's web server
    (`router.http.fast_ingest`) and answer low-level errors in the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same object, built by aiohttp with all its settings; only how it makes each
        # connection's protocol, and what runs before the app, change.
        server.__class__ = RouterServer
        assert isinstance(server, RouterServer)
        server.fast_connections = set()
        server.ingest_app = self.app if ingest_route_declared(self.app) else None
        server.request_handler = _expectation_first(server.request_handler)
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
