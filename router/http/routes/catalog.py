"""The scope catalog in force: which scope each event and each platform API call needs."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from router.http.context import CATALOG
from router.http.errors import ApiError, not_found
from router.http.operations import Resource
from subscriptions.catalog import CatalogData, ScopeEntry

resource = Resource("catalog")


class CatalogView(CatalogData):
    router_scopes: list[ScopeEntry] = Field(
        description="The router's own scopes (not the platform's) and the events it emits "
        "about itself; granted and routed like the platform's"
    )


class EventScope(BaseModel):
    event: str
    scope: str
    access: list[str]


class EndpointQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    method: str = Field(min_length=1, max_length=16, description="HTTP method, e.g. GET")
    # 512 characters, percent-encoded at up to 12 bytes each, still fit aiohttp's 8190-byte
    # request line; a longer limit would let a conforming request be refused before routing.
    path: str = Field(min_length=1, max_length=512, description="e.g. /contacts/abc123")


class EndpointScope(BaseModel):
    method: str
    path: str
    template: str = Field(
        description="The catalog's template that matched, e.g. GET /contacts/:contactId"
    )
    scope: str


@resource.get(
    "/v1/catalog",
    summary="The whole catalog",
    scope="read_catalog",
    bound="open",
    response=CatalogView,
)
async def get_catalog(request: web.Request) -> CatalogView:
    catalog = request.app[CATALOG]
    return CatalogView.model_validate(
        catalog.to_data() | {"router_scopes": catalog.router_scopes()}
    )


@resource.get(
    "/v1/catalog/events/{event}",
    summary="The scope one event requires",
    scope="read_catalog",
    bound="open",
    response=EventScope,
    errors=(404,),
)
async def get_event_scope(request: web.Request) -> EventScope:
    catalog = request.app[CATALOG]
    name = catalog.event_for_payload_type(request.match_info["event"])
    scope = catalog.required_scope(name)
    if scope is None:
        raise ApiError(404, "NOT_FOUND", f"Event {name!r} has no scope in the catalog")
    return EventScope(event=name, scope=scope, access=catalog.access(scope))


@resource.get(
    "/v1/catalog/endpoints",
    summary="The scope a platform API call requires",
    scope="read_catalog",
    bound="open",
    query=EndpointQuery,
    response=EndpointScope,
    errors=(404, 422),
)
async def get_endpoint_scope(request: web.Request, query: EndpointQuery) -> EndpointScope:
    match = request.app[CATALOG].scope_for_request(query.method, query.path)
    if match is None:
        raise not_found(f"Endpoint {query.method.upper()} {query.path}")
    return EndpointScope(
        method=match.method, path=match.path, template=match.template, scope=match.scope
    )
