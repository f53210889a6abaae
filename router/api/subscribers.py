"""The subscriber registry: apps that receive events, their grants, secrets and restrictions.

Shape checks (lengths, types, unknown fields, control characters, secret format) are the
request models'; checks that need the catalog or the network (scope and event names, the URL
rule and the SSRF guard) run in the handlers and report every problem at once, each naming its
field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from router.context import CATALOG, SETTINGS, SUBSCRIBERS
from router.errors import bad_request, conflict, not_found, validation_failed
from router.operations import Resource, render
from router.settings import Settings
from router.ssrf import OwnAddress, canonical_url, url_refusal
from router.text import Name, Token
from subscriptions.catalog import Catalog
from subscriptions.explain import Verdict
from subscriptions.ids import rfc3339
from subscriptions.models import Subscriber, SubscriberStatus
from subscriptions.store import Check, StaleVersion

resource = Resource("subscribers")

MAX_SCOPES = 100
MAX_EVENTS = 200
MAX_LOCATIONS = 1000
MAX_GRANT_CHANGES = 100

Url = Annotated[str, StringConstraints(max_length=2048)]
_URL = (
    "Absolute http(s) URL that receives deliveries: ASCII (an international host in punycode), "
    "no credentials or fragment; stored as the HTTP client will send it"
)
QueryText = Annotated[str, StringConstraints(max_length=200)]
Problems = list[tuple[str, str]]

_SECRET_RULE = "must be whsec_ followed by the base64 of 24 to 64 bytes"
# The same rule as a regex, so the OpenAPI document states it: 8-21 base64 quads (24-63
# bytes), optionally one more byte (`xx==`), or two more (`xxx=`) after at most 20 quads.
SECRET_PATTERN = (
    r"^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,21}(?:[A-Za-z0-9+/]{2}==)?"
    r"|(?:[A-Za-z0-9+/]{4}){8,20}[A-Za-z0-9+/]{3}=)$"
)


def _check_secret(value: str | None) -> str | None:
    """A given secret must be a Standard Webhooks secret of sensible strength."""
    if value is None:
        return None
    if not value.startswith("whsec_"):
        raise ValueError(_SECRET_RULE)
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_SECRET_RULE) from None
    if not 24 <= len(key) <= 64:
        raise ValueError(_SECRET_RULE)
    return value


class SubscriberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    url: Url = Field(description=_URL)
    scopes: list[Token] = Field(
        min_length=1, max_length=MAX_SCOPES, description="Catalog scopes granted to the app"
    )
    events: list[Token] | None = Field(
        default=None,
        max_length=MAX_EVENTS,
        description="Only these events (each unlocked by a granted scope)",
    )
    location_ids: list[Token] | None = Field(
        default=None, max_length=MAX_LOCATIONS, description="Bind to these locations"
    )
    company_id: Token | None = Field(default=None, description="Bind to this company")
    secret: str | None = Field(
        default=None,
        description="whsec_ + base64 of 24-64 bytes; generated when absent",
        pattern=SECRET_PATTERN,
    )

    _secret = field_validator("secret")(_check_secret)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class SubscriberPatch(BaseModel):
    """Any subset of the fields; null clears `events`, `location_ids` and `company_id`."""

    model_config = ConfigDict(extra="forbid")

    # Absent means "unchanged" and null is refused for these, so their type has no None: the
    # None default only marks absence (pydantic does not validate defaults) and is left out
    # of the schema, which would otherwise contradict the type.
    name: Name = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    url: Url = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    scopes: list[Token] = Field(  # type: ignore[assignment]
        default=None, min_length=1, max_length=MAX_SCOPES, json_schema_extra=_no_default
    )
    events: list[Token] | None = Field(default=None, max_length=MAX_EVENTS)
    location_ids: list[Token] | None = Field(default=None, max_length=MAX_LOCATIONS)
    company_id: Token | None = None
    status: Literal["active", "paused"] = Field(  # type: ignore[assignment]
        default=None,
        description="`disabled` is set only by the router (410 Gone)",
        json_schema_extra=_no_default,
    )


class GrantsChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[Token] = Field(default_factory=list, max_length=MAX_GRANT_CHANGES)
    remove: list[Token] = Field(default_factory=list, max_length=MAX_GRANT_CHANGES)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=50, ge=1, le=100)
    cursor: QueryText | None = Field(default=None, description="`next_cursor` of the previous page")
    scope: Token | None = Field(default=None, description="Only holders of this scope")
    status: SubscriberStatus | None = None


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: Token = Field(description="Event name or payload type, e.g. ContactCreate")
    location_id: QueryText | None = None
    company_id: QueryText | None = None


class SecretView(BaseModel):
    secret: str = Field(description="Masked: whsec_****<last 4>")
    expires_at: str | None = Field(description="When it stops signing; null for the current one")


class SubscriberBase(BaseModel):
    id: str
    name: str
    url: str
    scopes: list[str]
    events: list[str] | None
    location_ids: list[str] | None
    company_id: str | None
    status: SubscriberStatus
    status_reason: str | None
    created_at: str
    updated_at: str


class SubscriberCreated(SubscriberBase):
    secret: str = Field(description="The full signing secret; shown only here and on rotation")


class SubscriberView(SubscriberBase):
    secret: str = Field(description="The current signing secret, masked")
    secrets: list[SecretView] = Field(description="Every secret that signs, newest first")


class SubscriberList(BaseModel):
    items: list[SubscriberView]
    next_cursor: str | None


class RotatedSecret(BaseModel):
    secret: str = Field(description="The new signing secret, in full")
    secrets: list[SecretView]


def mask(secret: str) -> str:
    return "whsec_****" + secret[-4:]


def _base(sub: Subscriber) -> dict[str, Any]:
    return {
        **sub.model_dump(
            include={
                "id",
                "name",
                "url",
                "scopes",
                "events",
                "location_ids",
                "company_id",
                "status",
                "status_reason",
            }
        ),
        "created_at": rfc3339(sub.created_at),
        "updated_at": rfc3339(sub.updated_at),
    }


def _secret_views(sub: Subscriber) -> list[SecretView]:
    return [
        SecretView(
            secret=mask(s.secret),
            expires_at=None if s.expires_at is None else rfc3339(s.expires_at),
        )
        for s in sub.secrets
    ]


def view(sub: Subscriber) -> SubscriberView:
    return SubscriberView(**_base(sub), secret=mask(sub.secret), secrets=_secret_views(sub))


def _etag(sub: Subscriber) -> dict[str, str]:
    return {"ETag": f'"{sub.version}"'}


def _if_match(request: web.Request) -> int | None:
    """The version an If-Match header pins (None when absent or `*`); 400 if unreadable."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise bad_request('If-Match must be an ETag this API returned, e.g. "3"')
    return int(tag)


def scope_problems(catalog: Catalog, field: str, scopes: list[str]) -> Problems:
    return [
        (f"{field}.{i}", f"unknown scope {scope!r}")
        for i, scope in enumerate(scopes)
        if not catalog.is_scope(scope)
    ]


def event_problems(catalog: Catalog, scopes: list[str], events: list[str] | None) -> Problems:
    """Events that are unknown, or that none of `scopes` unlocks (naming the scope needed)."""
    problems: Problems = []
    for i, event in enumerate(events or ()):
        required = catalog.required_scope(event)
        if required is None:
            target = catalog.event_for_payload_type(event)
            hint = f" (it is a payload type of {target!r})" if target != event else ""
            problems.append((f"events.{i}", f"unknown event {event!r}{hint}"))
        elif required not in scopes:
            problems.append(
                (f"events.{i}", f"event {event!r} needs scope {required!r}, which is not granted")
            )
    return problems


def grant_problems(catalog: Catalog, sub: Subscriber) -> Problems:
    """What is wrong with a subscriber's grants as a whole (after a change)."""
    if not sub.scopes:
        return [("scopes", "a subscriber must hold at least one scope")]
    return scope_problems(catalog, "scopes", sub.scopes) + event_problems(
        catalog, sub.scopes, sub.events
    )


def own_address(settings: Settings) -> OwnAddress:
    """Where the router serving with `settings` can be reached (subscribers may not point
    there)."""
    return OwnAddress(settings.host, settings.port, settings.public_urls or ())


async def url_problems(request: web.Request, url: str) -> Problems:
    settings = request.app[SETTINGS]
    reason = await url_refusal(url, settings.allow_private_targets, own_address(settings))
    return [] if reason is None else [("url", reason)]


def _refuse(problems: Problems) -> None:
    if problems:
        raise validation_failed(problems)


def _checked_by(catalog: Catalog, problems: Sequence[tuple[str, str]] = ()) -> Check:
    """A store check refusing the resulting subscriber with `problems` and its grant problems."""

    def check(sub: Subscriber) -> None:
        _refuse([*problems, *grant_problems(catalog, sub)])

    return check


def _subscriber_id(request: web.Request) -> str:
    return request.match_info["subscriber_id"]


@resource.post(
    "/v1/subscribers",
    summary="Register a subscriber",
    scope="write_subscribers",
    body=SubscriberCreate,
    response=SubscriberCreated,
    status=201,
    errors=(400, 422),
)
async def create_subscriber(request: web.Request, body: SubscriberCreate) -> web.Response:
    catalog = request.app[CATALOG]
    _refuse(
        await url_problems(request, body.url)
        + scope_problems(catalog, "scopes", body.scopes)
        + event_problems(catalog, body.scopes, body.events)
    )
    fields = body.model_dump()
    fields["url"] = canonical_url(body.url)
    sub = await request.app[SUBSCRIBERS].create(**fields)
    return render(SubscriberCreated(**_base(sub), secret=sub.secret), 201, _etag(sub))


@resource.get(
    "/v1/subscribers",
    summary="List subscribers",
    scope="read_subscribers",
    query=ListQuery,
    response=SubscriberList,
    errors=(422,),
)
async def list_subscribers(request: web.Request, query: ListQuery) -> SubscriberList:
    if query.scope is not None and not request.app[CATALOG].is_scope(query.scope):
        raise validation_failed([("scope", f"unknown scope {query.scope!r}")])
    page = await request.app[SUBSCRIBERS].list_page(
        limit=query.limit, cursor=query.cursor, scope=query.scope, status=query.status
    )
    return SubscriberList(items=[view(s) for s in page.items], next_cursor=page.next_cursor)


@resource.get(
    "/v1/subscribers/{subscriber_id}",
    summary="One subscriber (secrets masked)",
    scope="read_subscribers",
    response=SubscriberView,
    errors=(404,),
)
async def get_subscriber(request: web.Request) -> web.Response:
    sub = await request.app[SUBSCRIBERS].get(_subscriber_id(request))
    if sub is None:
        raise not_found("Subscriber")
    return render(view(sub), 200, _etag(sub))


@resource.patch(
    "/v1/subscribers/{subscriber_id}",
    summary="Change a subscriber (If-Match: its ETag, to refuse a concurrent change)",
    scope="write_subscribers",
    body=SubscriberPatch,
    response=SubscriberView,
    errors=(400, 404, 409, 422),
)
async def patch_subscriber(request: web.Request, body: SubscriberPatch) -> web.Response:
    catalog = request.app[CATALOG]
    changes = body.model_dump(include=body.model_fields_set)
    problems: Problems = [
        (field, "must not be null")
        for field in ("name", "url", "scopes", "status")
        if field in changes and changes[field] is None
    ]
    _refuse(problems)
    # Reported with the resulting subscriber's problems, so one response lists them all.
    url = [] if "url" not in changes else await url_problems(request, changes["url"])
    if "url" in changes and not url:
        changes["url"] = canonical_url(changes["url"])
    try:
        sub = await request.app[SUBSCRIBERS].update(
            _subscriber_id(request),
            changes,
            expected_version=_if_match(request),
            check=_checked_by(catalog, url),
        )
    except StaleVersion:
        raise conflict("The subscriber changed since the version in If-Match") from None
    if sub is None:
        raise not_found("Subscriber")
    return render(view(sub), 200, _etag(sub))


@resource.delete(
    "/v1/subscribers/{subscriber_id}",
    summary="Delete a subscriber; its pending deliveries are skipped",
    scope="write_subscribers",
    status=204,
    errors=(400, 404, 409),
)
async def delete_subscriber(request: web.Request) -> web.Response:
    try:
        deleted = await request.app[SUBSCRIBERS].remove(
            _subscriber_id(request), expected_version=_if_match(request)
        )
    except StaleVersion:
        raise conflict("The subscriber changed since the version in If-Match") from None
    if deleted is None:
        raise not_found("Subscriber")
    return web.Response(status=204)


@resource.post(
    "/v1/subscribers/{subscriber_id}/grants",
    summary="Grant and revoke scopes",
    scope="write_subscribers",
    body=GrantsChange,
    response=SubscriberView,
    errors=(400, 404, 422),
)
async def change_grants(request: web.Request, body: GrantsChange) -> web.Response:
    catalog = request.app[CATALOG]
    both = set(body.add) & set(body.remove)
    _refuse(
        scope_problems(catalog, "add", body.add)
        + scope_problems(catalog, "remove", body.remove)
        + [
            (f"remove.{i}", f"scope {scope!r} is also in add")
            for i, scope in enumerate(body.remove)
            if scope in both
        ]
    )
    sub = await request.app[SUBSCRIBERS].change_grants(
        _subscriber_id(request), body.add, body.remove, check=_checked_by(catalog)
    )
    if sub is None:
        raise not_found("Subscriber")
    return render(view(sub), 200, _etag(sub))


@resource.post(
    "/v1/subscribers/{subscriber_id}/secret/rotate",
    summary="Rotate the signing secret (the old one keeps signing for ROUTER_SECRET_GRACE)",
    scope="write_subscribers",
    response=RotatedSecret,
    errors=(404,),
)
async def rotate_secret(request: web.Request) -> web.Response:
    sub = await request.app[SUBSCRIBERS].rotate_secret(
        _subscriber_id(request), grace_seconds=request.app[SETTINGS].secret_grace
    )
    if sub is None:
        raise not_found("Subscriber")
    return render(RotatedSecret(secret=sub.secret, secrets=_secret_views(sub)), 200, _etag(sub))


@resource.get(
    "/v1/subscribers/{subscriber_id}/explain",
    summary="Would this subscriber receive an event, and every reason it would not",
    scope="read_subscribers",
    query=ExplainQuery,
    response=Verdict,
    errors=(404, 422),
)
async def explain_subscriber(request: web.Request, query: ExplainQuery) -> Verdict:
    verdict = await request.app[SUBSCRIBERS].explain(
        query.event, query.location_id, query.company_id, _subscriber_id(request)
    )
    if verdict is None:
        raise not_found("Subscriber")
    return verdict
