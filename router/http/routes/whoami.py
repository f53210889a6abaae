"""`GET /v1/whoami`: who the caller's token stands for, so a client (the web UI) can tell an
operator's console from a subscriber's portal before it calls anything else."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from router.core.scopes import OPERATOR_SCOPES
from router.http.auth import PRINCIPAL
from router.http.context import KEYRING
from router.http.errors import unauthenticated
from router.http.operations import ANY_TOKEN, Resource

resource = Resource("whoami")

ADMIN_NAME = "admin"


class WhoAmI(BaseModel):
    name: str = Field(description="The API key's name; `admin` for the bootstrap token")
    scopes: list[str] = Field(description="The operator scopes the token carries")
    subscriber_id: str | None = Field(
        description="The one subscriber the key is confined to; null for an operator key"
    )


@resource.get(
    "/v1/whoami",
    summary="The caller's key: its name, its token's scopes and its subscriber, if bound",
    scope=ANY_TOKEN,
    bound="open",
    response=WhoAmI,
)
async def whoami(request: web.Request) -> WhoAmI:
    principal = request[PRINCIPAL]
    # In catalog order, whatever order the key was issued with.
    scopes = [scope for scope in OPERATOR_SCOPES if scope in principal.scopes]
    if principal.key_id is None:
        return WhoAmI(name=ADMIN_NAME, scopes=scopes, subscriber_id=None)
    key = await request.app[KEYRING].get(principal.key_id)
    # The token was live a moment ago; its key deleted since is as if it never was.
    if key is None:
        raise unauthenticated()
    return WhoAmI(name=key.name, scopes=scopes, subscriber_id=principal.subscriber_id)
