"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from router.connections import UNAVAILABLE
from router.context import REDIS
from router.errors import ApiError
from router.operations import Resource

resource = Resource("health")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@resource.get("/healthz", summary="The process is up", scope=None, response=Health)
async def healthz(request: web.Request) -> Health:
    return Health()


@resource.get("/readyz", summary="Redis answers", scope=None, response=Health, errors=(503,))
async def readyz(request: web.Request) -> Health:
    try:
        await request.app[REDIS].ping()
    except UNAVAILABLE:
        raise ApiError(503, "UNAVAILABLE", "Redis does not answer") from None
    return Health()
