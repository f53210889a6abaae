"""Who is calling the operator API, and whether their token holds the operation's scope.

Tokens are bearer tokens. The bootstrap `ROUTER_ADMIN_TOKEN` holds every scope; any other
token belongs to an API key (`router.storage.keyring`) and carries the scopes it was issued with.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from router.core.scopes import ADMIN, OPERATOR_SCOPES, Principal
from router.http.context import KEYRING, SETTINGS
from router.http.errors import Handler, insufficient_scopes, unauthenticated
from router.http.operations import operation_of

__all__ = ["ADMIN", "OPERATOR_SCOPES", "PRINCIPAL", "Principal", "auth_middleware"]

PRINCIPAL = web.RequestKey("principal", Principal)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request) -> Principal | None:
    """The principal behind the request's bearer token, or None. Comparisons are constant-time."""
    token = bearer_token(request)
    if token is None:
        return None
    admin = request.app[SETTINGS].admin_token
    if admin is not None and hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), admin.get_secret_value().encode()
    ):
        return ADMIN
    return await request.app[KEYRING].principal_for_token(token)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses an operation whose scope the token lacks: 401 with no valid token, else 403."""
    op = operation_of(request)
    if op is not None and op.scope is not None:
        principal = await authenticate(request)
        if principal is None:
            raise unauthenticated()
        if op.scope not in principal.scopes:
            raise insufficient_scopes(op.scope)
        request[PRINCIPAL] = principal
    return await handler(request)
