"""Logging set-up: JSON lines for machines, plain text on a terminal (`ROUTER_LOG_FORMAT`).

Nothing here (or anywhere) logs a token, a secret or a signature; request bodies and headers
are never logged either.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from router.settings import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.effective_log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiohttp's access log would print every ingest request; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
