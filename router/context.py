"""Typed application state: every object the handlers share, as an `aiohttp.web.AppKey`.

`router.app.create_app` fills these; handlers read them as `request.app[SUBSCRIBERS]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from redis.asyncio import Redis

from router.settings import Settings
from subscriptions.catalog import Catalog
from subscriptions.keys import Keys
from subscriptions.store import SubscriberStore

if TYPE_CHECKING:
    from router.keyring import Keyring
    from router.ledger import Ledger
    from router.metrics import Metrics
    from router.verification import RefusalMonitor, Verifier

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
KEYS = web.AppKey("keys", Keys)
CATALOG = web.AppKey("catalog", Catalog)
SUBSCRIBERS = web.AppKey("subscribers", SubscriberStore)
KEYRING: web.AppKey[Keyring] = web.AppKey("keyring")
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
VERIFIER: web.AppKey[Verifier | None] = web.AppKey("verifier")
REFUSALS: web.AppKey[RefusalMonitor] = web.AppKey("refusals")
