"""`GET /metrics`: the process's Prometheus metrics, with the shared queues' depths read from
Redis at scrape time (every process reports them as they are, not as it last saw them)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from router.http.context import HISTORY, METRICS
from router.http.operations import Resource
from router.storage.client import UNAVAILABLE

resource = Resource("metrics")


@resource.get("/metrics", summary="Prometheus metrics", scope=None)
async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    try:
        depths = await request.app[HISTORY].depths()
    except UNAVAILABLE:
        depths = None
    if depths is not None:
        for queue in ("ready", "retry", "dead", "dispatch"):
            m.queue_depth.labels(queue=queue).set(depths[queue])
        m.open_breakers.set(depths["open_breakers"])
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
