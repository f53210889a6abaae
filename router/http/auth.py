"""Who is calling the operator API, and whether their token holds the operation's scope.

Tokens are bearer tokens. The bootstrap `ROUTER_ADMIN_TOKEN` holds every scope; any other
token belongs to an API key (`router.storage.keyring`) and carries the scopes it was issued with.

A key bound to a subscriber is confined to it here, for every operation at once, by what the
operation declares (`Operation.bound`): refused, allowed only on its own subscriber's path
(404 for any other, exactly as for a subscriber that does not exist, so a bound key cannot
even learn which ids exist), or allowed with the handler narrowing to `bound_subscriber`.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from router.core.scopes import ADMIN, OPERATOR_SCOPES, Principal
from router.http.context import KEYRING, SETTINGS
from router.http.errors import ApiError, Handler, insufficient_scopes, unauthenticated
from router.http.operations import ANY_TOKEN, Operation, operation_of

__all__ = [
    "ADMIN",
    "OPERATOR_SCOPES",
    "PRINCIPAL",
    "Principal",
    "auth_middleware",
    "bound_subscriber",
    "subscriber_not_found",
]

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


def bound_subscriber(request: web.Request) -> str | None:
    """The subscriber the caller's key is bound to; None for an operator (or no token)."""
    principal = request.get(PRINCIPAL)
    return None if principal is None else principal.subscriber_id


def subscriber_not_found() -> ApiError:
    """The 404 for a subscriber that does not exist, and for one a bound key may not see:
    the same body, so the two cannot be told apart."""
    return ApiError(404, "NOT_FOUND", "Subscriber not found")


def _confine(request: web.Request, op: Operation, subscriber_id: str) -> None:
    """Refuses what a key bound to `subscriber_id` may not do with `op`."""
    if op.bound == "deny":
        raise ApiError(
            403, "SUBSCRIBER_BOUND", "A subscriber-bound API key cannot use this operation"
        )
    if op.bound == "subscriber_path" and request.match_info["subscriber_id"] != subscriber_id:
        raise subscriber_not_found()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses an operation whose scope the token lacks: 401 with no valid token, else 403;
    then confines a subscriber-bound key to its subscriber."""
    op = operation_of(request)
    if op is not None and op.scope is not None:
        principal = await authenticate(request)
        if principal is None:
            raise unauthenticated()
        if op.scope != ANY_TOKEN and op.scope not in principal.scopes:
            raise insufficient_scopes(op.scope)
        if principal.subscriber_id is not None:
            _confine(request, op, principal.subscriber_id)
        request[PRINCIPAL] = principal
    return await handler(request)
