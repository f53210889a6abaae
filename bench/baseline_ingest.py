"""The ingest baseline: a bare aiohttp app that validates the benchmark's body with pydantic
and answers 202 like the router, without Redis. Run as `python -m bench.baseline_ingest`.
"""

from __future__ import annotations

import argparse
import itertools

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, create_model

from bench.loop import use_uvloop


class CustomField(BaseModel):
    id: str
    value: str


# The documented ContactCreate payload's optional text fields.
_TEXT_FIELDS = (
    "webhookId",
    "timestamp",
    "address1",
    "city",
    "state",
    "companyName",
    "country",
    "source",
    "dateAdded",
    "dateOfBirth",
    "email",
    "name",
    "firstName",
    "lastName",
    "phone",
    "postalCode",
    "website",
    "assignedTo",
)
# Its fields, as a model: the documented ones checked, others kept unchecked.
ContactCreate = create_model(
    "ContactCreate",
    __config__=ConfigDict(extra="allow"),
    type=(str, ...),
    locationId=(str, ...),
    id=(str, ...),
    dnd=(bool | None, None),
    tags=(list[str], []),
    attachments=(list[object], []),
    customFields=(list[CustomField], []),
    **{name: (str | None, None) for name in _TEXT_FIELDS},
)


_ids = itertools.count()


async def ingest(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return web.Response(status=415)
    event = ContactCreate.model_validate_json(await request.read())
    body = {"event_id": f"evt_{next(_ids):012d}", "type": event.type, "status": "accepted"}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


LOOP = web.AppKey("loop", str)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "loop": request.app[LOOP]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app[LOOP] = use_uvloop()
    app.router.add_post("/webhooks", ingest)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
