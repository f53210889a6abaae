"""Typed application state: every object the handlers share, as an `aiohttp.web.AppKey`.

`router.http.app.create_app` fills these from `router.services.Services`; handlers read them
as `request.app[SUBSCRIBERS]`.
"""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from router.core.metrics import Metrics
from router.http.verification import RefusalMonitor, Verifier
from router.pipeline.operational import OperationalEvents
from router.settings import Settings
from router.storage.history import History
from router.storage.keyring import Keyring
from router.storage.ledger import Ledger
from subscriptions.catalog import Catalog
from subscriptions.store import SubscriberStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
CATALOG = web.AppKey("catalog", Catalog)
SUBSCRIBERS = web.AppKey("subscribers", SubscriberStore)
KEYRING = web.AppKey("keyring", Keyring)
LEDGER = web.AppKey("ledger", Ledger)
HISTORY = web.AppKey("history", History)
METRICS = web.AppKey("metrics", Metrics)
VERIFIER: web.AppKey[Verifier | None] = web.AppKey("verifier")
REFUSALS = web.AppKey("refusals", RefusalMonitor)
OPERATIONS = web.AppKey("operations", OperationalEvents)
OPENAPI = web.AppKey("openapi", bytes)  # the served document, built once per app
