"""Liveness and readiness probes, each with the checks an operator should see.

Neither answer turns non-2xx because ingest refuses most requests: a flood of forged requests
would then take every instance out of rotation. Such refusals show as `status: "degraded"`
with the check that says why (and in `router_events_refused_total`), within a minute.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from router.http.context import REDIS, REFUSALS
from router.http.errors import ApiError
from router.http.operations import Resource
from router.storage.client import UNAVAILABLE

resource = Resource("health")


class Check(BaseModel):
    status: Literal["ok", "failing"]
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, Check] = Field(
        description="`ingest`: whether most events of the last minute were refused"
    )


def _health(request: web.Request) -> Health:
    state = request.app[REFUSALS].state()
    if state.failing:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(state.reasons.items()))
        ingest = Check(
            status="failing",
            detail=f"{state.refused} of {state.refused + state.accepted} events refused in "
            f"the last {state.window} s ({reasons}); check ROUTER_VERIFY and its keys",
        )
    else:
        ingest = Check(status="ok")
    return Health(status="degraded" if state.failing else "ok", checks={"ingest": ingest})


@resource.get("/healthz", summary="The process is up", scope=None, response=Health)
async def healthz(request: web.Request) -> Health:
    return _health(request)


@resource.get("/readyz", summary="Redis answers", scope=None, response=Health, errors=(503,))
async def readyz(request: web.Request) -> Health:
    try:
        await request.app[REDIS].ping()
    except UNAVAILABLE:
        raise ApiError(503, "UNAVAILABLE", "Redis does not answer") from None
    return _health(request)
