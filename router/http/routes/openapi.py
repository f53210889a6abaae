"""`GET /openapi.json`: the document `router.http.app` built for this app at start."""

from __future__ import annotations

from aiohttp import web

from router.http.context import OPENAPI
from router.http.operations import Resource

resource = Resource("meta")


@resource.get("/openapi.json", summary="This API's OpenAPI 3.1 document", scope=None)
async def get_openapi(request: web.Request) -> web.Response:
    """The whole HTTP surface, generated from the declared operations and their models."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
