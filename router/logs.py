"""Logging set-up: JSON lines for machines, plain text on a terminal (`ROUTER_LOG_FORMAT`).

Nothing here (or anywhere) logs a token, a secret or a signature; request bodies and headers
are never logged either. Exception texts are where request data leaks into logs unnoticed
(a parser's error quotes the bytes it choked on, a validation error its input), so every
logged traceback keeps its frames and exception types but withholds the text of exceptions
not known to be free of request data.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from types import TracebackType

import orjson

from router.settings import Settings

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Exceptions whose text is about the service's own resources, never a request's content.
_TELLING_MODULES = ("redis.", "asyncio.")


def _tells(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__module__.startswith(_TELLING_MODULES)


def safe_traceback(exc_info: ExcInfo) -> str:
    """The traceback of `exc_info` (its chain included), with the text of each exception
    withheld unless `_tells` vouches for it."""
    lines: list[str] = []
    exc: BaseException | None = exc_info[1]
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    for i, item in enumerate(reversed(chain)):
        if i:
            lines.append("\nThen:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(item.__traceback__))
        name = type(item).__qualname__
        text = str(item) if _tells(item) else "(text withheld: it may quote request data)"
        lines.append(f"{type(item).__module__}.{name}: {text}")
    return "".join(lines).rstrip("\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc"] = safe_traceback(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:  # type: ignore[override]
        return safe_traceback(ei)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.effective_log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiohttp's access log would print every ingest request; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
