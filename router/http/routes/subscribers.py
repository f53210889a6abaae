"""The subscriber registry: apps that receive events, their grants, secrets and restrictions.

Shape checks (lengths, types, unknown fields, control characters, secret format) are the
request models'; checks that need the catalog or the network (scope and event names, the URL
rule and the SSRF guard) run in the handlers and report every problem at once, each naming its
field. Both are stated in the OpenAPI document (catalog names as enums, the URL rule as a
pattern), so a request built from the document is refused only when its URL's host resolves to
a refused address or to the router itself.

Rules that tie fields together are kept only where safety needs them: an event filter may name
an event whose scope is not granted (it is simply not delivered until the scope is, and
`explain` says "missing scope"), so revoking a scope is always possible.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from router.core.targets import canonical_url
from router.core.text import Name, Token
from router.http.auth import bound_subscriber, subscriber_not_found
from router.http.context import CATALOG, OPERATIONS, SETTINGS, SUBSCRIBERS
from router.http.errors import bad_request, conflict, validation_failed
from router.http.openapi import PAYLOAD_FILTER, catalog_names, subscriber_url
from router.http.operations import Resource, render
from router.pipeline.targets import OwnAddress, url_refusal
from router.settings import Settings
from subscriptions.catalog import Catalog
from subscriptions.explain import Verdict
from subscriptions.filters import GRAMMAR, FilterError, compile_filter
from subscriptions.ids import rfc3339
from subscriptions.models import Ordering, RateLimit, RetrySchedule, Subscriber, SubscriberStatus
from subscriptions.store import UPDATABLE_FIELDS, Page, StaleVersion

resource = Resource("subscribers")

MAX_SCOPES = 100
MAX_EVENTS = 200
MAX_LOCATIONS = 1000
MAX_GRANT_CHANGES = 100

# Checked by the handlers (`url_refusal` ends with the pattern the document states), so that
# a bad URL is reported together with the request's other problems.
Url = Annotated[str, StringConstraints(max_length=2048), subscriber_url()]
_URL = (
    "Absolute http(s) URL that receives deliveries: ASCII (an international host in punycode), "
    "no credentials or fragment; stored as the HTTP client will send it"
)
ScopeName = Annotated[Token, catalog_names("scopes")]
EventName = Annotated[Token, catalog_names("events")]
EventOrAlias = Annotated[Token, catalog_names("events and aliases")]
QueryText = Annotated[str, StringConstraints(max_length=200)]
Problems = list[tuple[str, str]]
_RATE_LIMIT = (
    "Requests per second to this subscriber, across every router process; throttled "
    "deliveries wait, they are not failed"
)
_RETRY_SCHEDULE = "Seconds between this subscriber's attempts, overriding the router's"
_ORDERING = (
    "`resource`: deliveries about the same resource (the catalog names its payload field per "
    "event, `resource_keys`) are attempted one at a time in the order their events were "
    "accepted, a failing one holding back only its own resource"
)

FilterDocument = Annotated[dict[str, Any], PAYLOAD_FILTER]
_FILTER = (
    "Only events whose payload matches this filter (checked at fan-out and again before "
    "every attempt; `{}` means none). " + GRAMMAR
)

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


_EVENTS = "Only these events; one whose scope is not granted is not delivered until it is granted"


class SubscriberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    url: Url = Field(description=_URL)
    scopes: list[ScopeName] = Field(
        min_length=1, max_length=MAX_SCOPES, description="Catalog scopes granted to the app"
    )
    events: list[EventName] | None = Field(default=None, max_length=MAX_EVENTS, description=_EVENTS)
    location_ids: list[Token] | None = Field(
        default=None, max_length=MAX_LOCATIONS, description="Bind to these locations"
    )
    company_id: Token | None = Field(default=None, description="Bind to this company")
    secret: str | None = Field(
        default=None,
        description="whsec_ + base64 of 24-64 bytes; generated when absent",
        pattern=SECRET_PATTERN,
    )
    rate_limit: RateLimit | None = Field(default=None, description=_RATE_LIMIT)
    retry_schedule: RetrySchedule | None = Field(default=None, description=_RETRY_SCHEDULE)
    ordering: Ordering = Field(default="none", description=_ORDERING)
    filter: FilterDocument | None = Field(default=None, description=_FILTER)

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
    url: Url = Field(  # type: ignore[assignment]
        default=None, description=_URL, json_schema_extra=_no_default
    )
    scopes: list[ScopeName] = Field(  # type: ignore[assignment]
        default=None, min_length=1, max_length=MAX_SCOPES, json_schema_extra=_no_default
    )
    events: list[EventName] | None = Field(default=None, max_length=MAX_EVENTS, description=_EVENTS)
    location_ids: list[Token] | None = Field(default=None, max_length=MAX_LOCATIONS)
    company_id: Token | None = None
    status: Literal["active", "paused"] = Field(  # type: ignore[assignment]
        default=None,
        description="`disabled` is set only by the router (410 Gone)",
        json_schema_extra=_no_default,
    )
    rate_limit: RateLimit | None = Field(default=None, description=_RATE_LIMIT + "; null: none")
    retry_schedule: RetrySchedule | None = Field(
        default=None, description=_RETRY_SCHEDULE + "; null: the router's"
    )
    ordering: Ordering = Field(  # type: ignore[assignment]
        default=None, description=_ORDERING, json_schema_extra=_no_default
    )
    filter: FilterDocument | None = Field(default=None, description=_FILTER + " null: none.")


class GrantsChange(BaseModel):
    """Scopes to grant and to revoke; a scope named in both ends up revoked."""

    model_config = ConfigDict(extra="forbid")

    add: list[ScopeName] = Field(default_factory=list, max_length=MAX_GRANT_CHANGES)
    remove: list[ScopeName] = Field(
        default_factory=list,
        max_length=MAX_GRANT_CHANGES,
        description="Revoked after `add` is applied; revoking the last scope is allowed",
    )


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=50, ge=1, le=100)
    cursor: QueryText | None = Field(default=None, description="`next_cursor` of the previous page")
    scope: ScopeName | None = Field(default=None, description="Only holders of this scope")
    status: SubscriberStatus | None = None


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: EventOrAlias = Field(description="Event name or payload type, e.g. ContactCreate")
    location_id: QueryText | None = None
    company_id: QueryText | None = None


class ExplainRequest(BaseModel):
    """An event as the router would route it, its payload included."""

    model_config = ConfigDict(extra="forbid")

    event: EventOrAlias = Field(description="Event name or payload type, e.g. ContactCreate")
    location_id: QueryText | None = None
    company_id: QueryText | None = None
    payload: dict[str, Any] | None = Field(
        default=None,
        description="The event's payload, for the subscriber's payload filter; without it, "
        "a subscriber with a filter is not entitled",
    )


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
    rate_limit: RateLimit | None = Field(description=_RATE_LIMIT + "; null: none")
    retry_schedule: list[float] | None = Field(
        description=_RETRY_SCHEDULE + "; null: the router's (ROUTER_RETRY_SCHEDULE)"
    )
    ordering: Ordering = Field(description=_ORDERING)
    filter: FilterDocument | None = Field(description="Payload filter; null: none")
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
        # What an operator may set, and the id: the store's list, so a new field shows at once.
        **sub.model_dump(include={"id", *UPDATABLE_FIELDS}),
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


def event_problems(catalog: Catalog, events: list[str] | None) -> Problems:
    """Events the catalog does not know (a payload-type alias is named as such)."""
    problems: Problems = []
    for i, event in enumerate(events or ()):
        if catalog.required_scope(event) is None:
            target = catalog.event_for_payload_type(event)
            hint = f" (it is a payload type of {target!r})" if target != event else ""
            problems.append((f"events.{i}", f"unknown event {event!r}{hint}"))
    return problems


def filter_problems(document: dict[str, Any] | None) -> Problems:
    """Every way a payload filter breaks the grammar, each named by its path in it."""
    if document is None:
        return []
    try:
        compile_filter(document)
    except FilterError as error:
        return [(f"filter.{path}" if path else "filter", msg) for path, msg in error.problems]
    return []


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


def _subscriber_id(request: web.Request) -> str:
    return request.match_info["subscriber_id"]


async def _update(request: web.Request, changes: dict[str, Any]) -> Subscriber | None:
    """Apply a PATCH (If-Match honoured); an operator pausing an active subscriber is
    announced to operations (`router.subscriber.disabled`), like the router disabling one."""
    store, subscriber_id = request.app[SUBSCRIBERS], _subscriber_id(request)
    pausing = changes.get("status") == SubscriberStatus.paused
    before = await store.get(subscriber_id) if pausing else None
    sub = await store.update(subscriber_id, changes, expected_version=_if_match(request))
    if sub is not None and before is not None and before.status is SubscriberStatus.active:
        request.app[OPERATIONS].emit(
            "router.subscriber.disabled",
            subscriber_id=sub.id,
            reason="paused by an operator",
            status=SubscriberStatus.paused.value,
        )
    return sub


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
        + event_problems(catalog, body.events)
        + filter_problems(body.filter)
    )
    fields = body.model_dump()
    fields["url"] = canonical_url(body.url)
    sub = await request.app[SUBSCRIBERS].create(**fields)
    return render(SubscriberCreated(**_base(sub), secret=sub.secret), 201, _etag(sub))


@resource.get(
    "/v1/subscribers",
    summary="List subscribers",
    scope="read_subscribers",
    bound="filter",
    query=ListQuery,
    response=SubscriberList,
    errors=(422,),
)
async def list_subscribers(request: web.Request, query: ListQuery) -> SubscriberList:
    """A subscriber-bound key's listing holds its own subscriber only."""
    if query.scope is not None and not request.app[CATALOG].is_scope(query.scope):
        raise validation_failed([("scope", f"unknown scope {query.scope!r}")])
    bound = bound_subscriber(request)
    if bound is None:
        page = await request.app[SUBSCRIBERS].list_page(
            limit=query.limit, cursor=query.cursor, scope=query.scope, status=query.status
        )
    else:
        page = await _own_page(request, bound, query)
    return SubscriberList(items=[view(s) for s in page.items], next_cursor=page.next_cursor)


async def _own_page(request: web.Request, subscriber_id: str, query: ListQuery) -> Page:
    """The one-subscriber listing of a bound key, with the same filters and cursor rule."""
    sub = await request.app[SUBSCRIBERS].get(subscriber_id)
    shown = (
        sub is not None
        and (query.cursor is None or sub.id > query.cursor)
        and (query.scope is None or query.scope in sub.scopes)
        and (query.status is None or sub.status is query.status)
    )
    return Page([sub] if shown and sub is not None else [], None)


@resource.get(
    "/v1/subscribers/{subscriber_id}",
    summary="One subscriber (secrets masked)",
    scope="read_subscribers",
    bound="subscriber_path",
    response=SubscriberView,
    errors=(404,),
)
async def get_subscriber(request: web.Request) -> web.Response:
    sub = await request.app[SUBSCRIBERS].get(_subscriber_id(request))
    if sub is None:
        raise subscriber_not_found()
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
        for field in ("name", "url", "scopes", "status", "ordering")
        if field in changes and changes[field] is None
    ]
    if changes.get("url") is not None:
        problems += await url_problems(request, changes["url"])
    if changes.get("scopes") is not None:
        problems += scope_problems(catalog, "scopes", changes["scopes"])
    problems += event_problems(catalog, changes.get("events"))
    problems += filter_problems(changes.get("filter"))
    _refuse(problems)
    if "url" in changes:
        changes["url"] = canonical_url(changes["url"])
    try:
        sub = await _update(request, changes)
    except StaleVersion:
        raise conflict("The subscriber changed since the version in If-Match") from None
    if sub is None:
        raise subscriber_not_found()
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
        raise subscriber_not_found()
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
    _refuse(
        scope_problems(catalog, "add", body.add) + scope_problems(catalog, "remove", body.remove)
    )
    sub = await request.app[SUBSCRIBERS].change_grants(
        _subscriber_id(request), body.add, body.remove
    )
    if sub is None:
        raise subscriber_not_found()
    return render(view(sub), 200, _etag(sub))


@resource.post(
    "/v1/subscribers/{subscriber_id}/secret/rotate",
    summary="Rotate the signing secret (the old one keeps signing for ROUTER_SECRET_GRACE)",
    scope="write_subscribers",
    bound="subscriber_path",
    response=RotatedSecret,
    errors=(404,),
)
async def rotate_secret(request: web.Request) -> web.Response:
    sub = await request.app[SUBSCRIBERS].rotate_secret(
        _subscriber_id(request), grace_seconds=request.app[SETTINGS].secret_grace
    )
    if sub is None:
        raise subscriber_not_found()
    return render(RotatedSecret(secret=sub.secret, secrets=_secret_views(sub)), 200, _etag(sub))


@resource.get(
    "/v1/subscribers/{subscriber_id}/explain",
    summary="Would this subscriber receive an event, and every reason it would not",
    scope="read_subscribers",
    bound="subscriber_path",
    query=ExplainQuery,
    response=Verdict,
    errors=(404, 422),
)
async def explain_subscriber(request: web.Request, query: ExplainQuery) -> Verdict:
    return await _explain(request, query.event, query.location_id, query.company_id, None)


@resource.post(
    "/v1/subscribers/{subscriber_id}/explain",
    summary="Would this subscriber receive an event with this payload, and every reason not",
    scope="read_subscribers",
    body=ExplainRequest,
    response=Verdict,
    errors=(400, 404, 422),
)
async def explain_subscriber_payload(request: web.Request, body: ExplainRequest) -> Verdict:
    """As GET, with the event's payload: a payload filter that keeps it out names the
    predicate that failed and the value found (`filter: pipelineId $eq "p1" got "p2"`)."""
    return await _explain(request, body.event, body.location_id, body.company_id, body.payload)


async def _explain(
    request: web.Request,
    event: str,
    location_id: str | None,
    company_id: str | None,
    payload: dict[str, Any] | None,
) -> Verdict:
    catalog = request.app[CATALOG]
    if catalog.required_scope(catalog.event_for_payload_type(event)) is None:
        raise validation_failed([("event", f"unknown event {event!r}")])
    verdict = await request.app[SUBSCRIBERS].explain(
        event, location_id, company_id, _subscriber_id(request), payload
    )
    if verdict is None:
        raise subscriber_not_found()
    return verdict
