"""Operator API keys: create (token shown once), list, read, change scopes, regenerate, delete.

Every operation needs `write_api_keys`, reads included: whoever can see keys can mint them.
A key's token carries the scopes it was issued with; `PATCH` changes the key's scopes only,
and they reach a token through `POST /v1/api-keys/{id}/regenerate` (the seed's rule).

A caller can never end up holding, or handing out, more than its own token holds: it may
give a key only scopes its token holds, and may change, regenerate or delete only keys
whose scopes and token scopes its token holds (regenerating shows the new token, so a
stronger key's regeneration would hand it over). Anything else is 403 `INSUFFICIENT_SCOPES`
naming the first scope the caller lacks. The admin token holds every scope.

A key may be bound to one subscriber (`subscriber_id`, which must exist): it then sees and
acts on that subscriber alone (`router.http.auth`). A bound caller, if it holds
`write_api_keys` at all, may create only keys bound to its own subscriber and sees and
manages only those; any other key is 404 to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from router.core.text import Name
from router.http.auth import OPERATOR_SCOPES, PRINCIPAL, Principal, bound_subscriber
from router.http.context import KEYRING, SUBSCRIBERS
from router.http.errors import insufficient_scopes, not_found, validation_failed
from router.http.operations import Resource
from router.storage.keyring import ApiKey, KeyCheck
from subscriptions.ids import rfc3339

log = logging.getLogger("router.api.api_keys")

resource = Resource("api-keys")


def _known_scope(value: object) -> object:
    # Before the Literal check, so the 422 names the unknown scope instead of listing choices.
    if isinstance(value, str) and value not in OPERATOR_SCOPES:
        raise ValueError(f"unknown operator scope {value!r}")
    return value


OperatorScope = Annotated[Literal[OPERATOR_SCOPES], BeforeValidator(_known_scope)]
ScopeList = Annotated[
    list[OperatorScope],
    Field(
        min_length=1,
        max_length=100,
        description="Operator scopes; duplicates are ignored. Each must be held by the "
        "caller's token.",
    ),
]


_BOUND = (
    "The one subscriber this key is confined to: it sees and acts on that subscriber alone "
    "(null: an operator key, seeing every subscriber)"
)


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    scopes: ScopeList
    subscriber_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None,
        description=_BOUND + ". Must exist; a subscriber-bound caller must give its own.",
    )


class ApiKeyScopesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: ScopeList = Field(
        description="The key's new scopes; its token keeps the old ones until regenerated."
    )


class ApiKeyCreated(BaseModel):
    id: str
    name: str
    scopes: list[str]
    token: str = Field(description="The bearer token. Shown only in this response.")
    created_at: str
    subscriber_id: str | None = Field(description=_BOUND)


class ApiKeyView(BaseModel):
    id: str
    name: str
    subscriber_id: str | None = Field(description=_BOUND)
    scopes: list[str] = Field(description="The key's current scopes.")
    token_scopes: list[str] = Field(
        description="The scopes its live token was issued with (they differ from `scopes` "
        "until the token is regenerated)."
    )
    created_at: str
    updated_at: str


class ApiKeyPage(BaseModel):
    items: list[ApiKeyView]
    next_cursor: str | None


class ApiKeyRegenerated(BaseModel):
    id: str
    name: str
    scopes: list[str] = Field(description="The scopes the new token carries.")
    token: str = Field(description="The new bearer token; the previous one no longer works.")


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int = Field(default=50, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        default=None, description="`next_cursor` of the previous page"
    )


def _view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=key.id,
        name=key.name,
        subscriber_id=key.subscriber_id,
        scopes=key.scopes,
        token_scopes=key.token_scopes,
        created_at=rfc3339(key.created_at),
        updated_at=rfc3339(key.updated_at),
    )


def _actor(request: web.Request) -> str:
    principal: Principal = request[PRINCIPAL]
    return principal.key_id or "admin"


def _require_held(request: web.Request, scopes: Iterable[str]) -> None:
    """403 naming the first of `scopes` the caller's token does not hold."""
    held = request[PRINCIPAL].scopes
    missing = next((scope for scope in scopes if scope not in held), None)
    if missing is not None:
        raise insufficient_scopes(missing)


def _visible(request: web.Request, key: ApiKey) -> bool:
    """Whether the caller may see `key`: an operator sees every key, a bound caller only the
    keys bound to its own subscriber."""
    bound = bound_subscriber(request)
    return bound is None or key.subscriber_id == bound


def _no_stronger_than_caller(request: web.Request) -> KeyCheck:
    """Refuses to act on a key the caller may not see (404) or one holding, or whose token
    holds, a scope the caller's token lacks (403). Run by the keyring on the stored record,
    in the changing transaction."""

    def check(key: ApiKey) -> None:
        if not _visible(request, key):
            raise not_found("API key")
        _require_held(request, [*key.scopes, *key.token_scopes])

    return check


async def _check_binding(request: web.Request, subscriber_id: str | None) -> None:
    """422 naming `subscriber_id` unless the new key's binding is one the caller may give:
    an existing subscriber, and the caller's own if the caller is bound. The same message
    for a subscriber that does not exist and one a bound caller may not see."""
    bound = bound_subscriber(request)
    if bound is not None and subscriber_id is None:
        message = "a subscriber-bound key may only create keys bound to its own subscriber"
        raise validation_failed([("subscriber_id", message)])
    if subscriber_id is None:
        return
    if (bound is not None and subscriber_id != bound) or await request.app[SUBSCRIBERS].get(
        subscriber_id
    ) is None:
        raise validation_failed([("subscriber_id", f"no subscriber {subscriber_id!r}")])


def _key_id(request: web.Request) -> str:
    return request.match_info["id"]


@resource.post(
    "/v1/api-keys",
    summary="Create an API key (its token is shown once)",
    scope="write_api_keys",
    bound="filter",
    body=ApiKeyCreate,
    response=ApiKeyCreated,
    status=201,
    errors=(422,),
)
async def create_api_key(request: web.Request, body: ApiKeyCreate) -> ApiKeyCreated:
    _require_held(request, body.scopes)
    await _check_binding(request, body.subscriber_id)
    key, token = await request.app[KEYRING].create(body.name, body.scopes, body.subscriber_id)
    log.info(
        "api key %s created by %s with scopes %s, bound to %s",
        key.id,
        _actor(request),
        key.scopes,
        key.subscriber_id or "no subscriber",
    )
    return ApiKeyCreated(
        id=key.id,
        name=key.name,
        scopes=key.scopes,
        token=token,
        created_at=rfc3339(key.created_at),
        subscriber_id=key.subscriber_id,
    )


@resource.get(
    "/v1/api-keys",
    summary="List API keys (never their tokens)",
    scope="write_api_keys",
    bound="filter",
    query=PageQuery,
    response=ApiKeyPage,
    errors=(422,),
)
async def list_api_keys(request: web.Request, query: PageQuery) -> ApiKeyPage:
    """A bound caller's pages hold only its subscriber's keys."""
    keys, next_cursor = await request.app[KEYRING].list(
        query.limit, query.cursor, subscriber_id=bound_subscriber(request)
    )
    return ApiKeyPage(items=[_view(k) for k in keys], next_cursor=next_cursor)


@resource.get(
    "/v1/api-keys/{id}",
    summary="Read an API key: its scopes and its token's scopes",
    scope="write_api_keys",
    bound="filter",
    response=ApiKeyView,
    errors=(404,),
)
async def get_api_key(request: web.Request) -> ApiKeyView:
    key = await request.app[KEYRING].get(_key_id(request))
    if key is None or not _visible(request, key):
        raise not_found("API key")
    return _view(key)


@resource.patch(
    "/v1/api-keys/{id}",
    summary="Replace an API key's scopes (its token changes only when regenerated)",
    scope="write_api_keys",
    bound="filter",
    body=ApiKeyScopesUpdate,
    response=ApiKeyView,
    errors=(404, 422),
)
async def update_api_key(request: web.Request, body: ApiKeyScopesUpdate) -> ApiKeyView:
    _require_held(request, body.scopes)
    key = await request.app[KEYRING].update_scopes(
        _key_id(request), body.scopes, check=_no_stronger_than_caller(request)
    )
    if key is None:
        raise not_found("API key")
    log.info("api key %s scopes set to %s by %s", key.id, key.scopes, _actor(request))
    return _view(key)


@resource.post(
    "/v1/api-keys/{id}/regenerate",
    summary="Issue a new token with the key's current scopes; the old token stops working",
    scope="write_api_keys",
    bound="filter",
    response=ApiKeyRegenerated,
    errors=(404,),
)
async def regenerate_api_key(request: web.Request) -> ApiKeyRegenerated:
    result = await request.app[KEYRING].regenerate(
        _key_id(request), check=_no_stronger_than_caller(request)
    )
    if result is None:
        raise not_found("API key")
    key, token = result
    log.info("api key %s token regenerated by %s", key.id, _actor(request))
    return ApiKeyRegenerated(id=key.id, name=key.name, scopes=key.token_scopes, token=token)


@resource.delete(
    "/v1/api-keys/{id}",
    summary="Delete an API key and its token",
    scope="write_api_keys",
    bound="filter",
    status=204,
    errors=(404,),
)
async def delete_api_key(request: web.Request) -> web.Response:
    if not await request.app[KEYRING].delete(
        _key_id(request), check=_no_stronger_than_caller(request)
    ):
        raise not_found("API key")
    log.info("api key %s deleted by %s", _key_id(request), _actor(request))
    return web.Response(status=204)
