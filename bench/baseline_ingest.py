"""The ingest baseline: a bare aiohttp app that validates the benchmark's body with pydantic
and answers 202 like the router, without Redis. Run as `python -m bench.baseline_ingest`.
"""

from __future__ import annotations

import argparse
import itertools

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from bench.loop import use_uvloop


class CustomField(BaseModel):
    id: str
    value: str


class ContactCreate(BaseModel):
    """The fields of the documented ContactCreate payload (others are kept, not checked)."""

    model_config = ConfigDict(extra="allow")

    type: str
    locationId: str
    id: str
    webhookId: str | None = None
    timestamp: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    companyName: str | None = None
    country: str | None = None
    source: str | None = None
    dateAdded: str | None = None
    dateOfBirth: str | None = None
    dnd: bool | None = None
    email: str | None = None
    name: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    phone: str | None = None
    postalCode: str | None = None
    tags: list[str] = []
    website: str | None = None
    attachments: list[object] = []
    assignedTo: str | None = None
    customFields: list[CustomField] = []


_ids = itertools.count()


async def ingest(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return web.Response(status=415)
    event = ContactCreate.model_validate_json(await request.read())
    body = {"event_id": f"evt_{next(_ids):012d}", "type": event.type, "status": "accepted"}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    use_uvloop()
    app = web.Application()
    app.router.add_post("/webhooks", ingest)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
