"""The scope catalog in force: the OAuth scope each webhook event and each API call requires.

The catalog comes from a data file (the shipped v1 catalog unless `ROUTER_CATALOG` names
another, which may be JSON or a table in the platform's markdown format) plus an optional
overlay (`ROUTER_CATALOG_OVERLAY`) of extra event -> scope mappings and payload-type aliases.
Requirements are exact: a `.write` scope does not imply the matching `.readonly`.

The router adds a scope of its own, `router.operations`, unlocking the events it emits about
itself (`ROUTER_EVENTS`): routed by the same rule as the platform's, but kept apart from the
platform's data (`to_data` leaves it out; `router_scopes` lists it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from subscriptions.catalog_parser import CatalogError, parse_markdown

CATALOG_SETTING = "ROUTER_CATALOG"
OVERLAY_SETTING = "ROUTER_CATALOG_OVERLAY"
ACCESS_TYPES = ("Sub-Account", "Company")

_ENDPOINT = re.compile(r"([A-Z]+) (/\S*)")
_RESOURCE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,7}")

ROUTER_SCOPE = "router.operations"
ROUTER_EVENTS = (
    "router.subscriber.disabled",
    "router.breaker.opened",
    "router.breaker.closed",
    "router.delivery.dead",
    "router.verification.failing",
)


def is_router_event(event: str) -> bool:
    """True for the events the router emits about itself (never the platform's)."""
    return event in ROUTER_EVENTS


class ScopeEntry(BaseModel):
    """One scope: its access types, the endpoints (`METHOD /path`) and events it unlocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    access: list[str]
    endpoints: list[str]
    events: list[str]

    @field_validator("access")
    @classmethod
    def _known_access(cls, value: list[str]) -> list[str]:
        for access in value:
            if access not in ACCESS_TYPES:
                raise ValueError(f"access type {access!r} is not one of {', '.join(ACCESS_TYPES)}")
        return value

    @field_validator("endpoints")
    @classmethod
    def _method_and_path(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            if not _ENDPOINT.fullmatch(endpoint):
                raise ValueError(f"endpoint {endpoint!r} is not 'METHOD /path'")
        return value

    @field_validator("events")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if any(not event for event in value):
            raise ValueError("an event name is empty")
        return value


class CatalogData(BaseModel):
    """The catalog data file's schema (`subscriptions/data/catalog_v1.json`)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    scopes: list[ScopeEntry]
    aliases: dict[str, str] = Field(default_factory=dict)
    resource_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Per event, the dotted path of the payload field naming the resource it "
        "is about (`id`, `conversationId`): ordered subscribers get one event of a resource "
        "at a time",
    )


class _Overlay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    resource_keys: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EndpointMatch:
    """The catalog endpoint an API request matched.

    `method` is upper-case, `path` the request path without its query string, `template`
    the catalog's endpoint as written (`GET /contacts/:contactId`), `scope` the scope it needs.
    """

    method: str
    path: str
    template: str
    scope: str


class CatalogCounts(NamedTuple):
    scopes: int
    endpoints: int
    events: int

    def __str__(self) -> str:
        return f"{self.scopes} scopes, {self.endpoints} endpoints, {self.events} events"


@dataclass(frozen=True, slots=True)
class _Route:
    segments: tuple[str | None, ...]  # None stands for a `:param` segment
    literals: int
    template: str
    scope: str


class Catalog:
    """An immutable scope catalog with O(1) event lookups and precompiled endpoint templates."""

    __slots__ = (
        "_aliases",
        "_event_scopes",
        "_resource_keys",
        "_router_scopes",
        "_routes",
        "_scopes",
        "_version",
    )

    def __init__(self, data: CatalogData, *, router_scopes: frozenset[str] = frozenset()) -> None:
        """Build the catalog from validated data; the scopes named in `router_scopes` are the
        router's own (see `with_router_scope`).

        Raises `CatalogError` if a scope is listed twice, or an alias points to an event no
        scope unlocks or hides an event of the same name.
        """
        self._router_scopes = router_scopes
        scopes: dict[str, ScopeEntry] = {}
        event_scopes: dict[str, list[str]] = {}
        routes: dict[str, list[_Route]] = {}
        for entry in data.scopes:
            if entry.name in scopes:
                raise CatalogError(f"scope '{entry.name}' is listed twice")
            scopes[entry.name] = entry
            for event in entry.events:
                event_scopes.setdefault(event, [])
                if entry.name not in event_scopes[event]:
                    event_scopes[event].append(entry.name)
            for endpoint in entry.endpoints:
                method, template_path = endpoint.split(" ", 1)
                segments = tuple(
                    None if _is_param(segment) else segment for segment in _segments(template_path)
                )
                literals = sum(segment is not None for segment in segments)
                routes.setdefault(method, []).append(
                    _Route(segments, literals, endpoint, entry.name)
                )
        for alias, event in data.aliases.items():
            if event not in event_scopes:
                raise CatalogError(
                    f"alias '{alias}' points to event '{event}', which no scope unlocks"
                )
            if alias in event_scopes and alias != event:
                raise CatalogError(f"alias '{alias}' would hide the event of the same name")
        for event, path in data.resource_keys.items():
            if event not in event_scopes:
                raise CatalogError(f"resource key for '{event}', which no scope unlocks")
            if not _RESOURCE_PATH.fullmatch(path):
                raise CatalogError(f"resource key of '{event}' is not a dotted path: {path!r}")
        self._resource_keys = MappingProxyType(dict(data.resource_keys))
        self._version = data.version
        self._scopes = MappingProxyType(scopes)
        self._aliases = MappingProxyType(dict(data.aliases))
        self._event_scopes = {event: tuple(names) for event, names in event_scopes.items()}
        # Most literal segments first; sorted() is stable, so ties keep table order.
        self._routes = {
            method: tuple(sorted(candidates, key=lambda route: -route.literals))
            for method, candidates in routes.items()
        }

    @property
    def version(self) -> str:
        return self._version

    @property
    def scopes(self) -> Mapping[str, ScopeEntry]:
        """Every scope by name, in table order (read-only)."""
        return self._scopes

    @property
    def aliases(self) -> Mapping[str, str]:
        """Payload `type` -> event name, for payloads that do not name their own event."""
        return self._aliases

    def required_scope(self, event: str) -> str | None:
        """The scope an app must hold to receive `event`, or None for an unknown event.

        Exact: no alias resolution (see `event_for_payload_type`) and no implication between
        scopes. Where a table lists an event under several scopes, the first listed is returned.
        """
        scopes = self._event_scopes.get(event)
        return scopes[0] if scopes else None

    def scopes_unlocking(self, event: str) -> set[str]:
        """Every scope that unlocks `event` (exactly one for each v1 event; empty if unknown)."""
        return set(self._event_scopes.get(event, ()))

    def event_for_payload_type(self, payload_type: str) -> str:
        """The event a payload with this `type` is: its alias target, else the type itself."""
        return self._aliases.get(payload_type, payload_type)

    def event_names(self) -> set[str]:
        """Every event some scope unlocks, overlay events included."""
        return set(self._event_scopes)

    def is_scope(self, name: str) -> bool:
        return name in self._scopes

    def access(self, scope: str) -> list[str]:
        """The access types of `scope` (`Sub-Account`, `Company`); raises KeyError if unknown."""
        return list(self._scopes[scope].access)

    def scope_for_request(self, method: str, path: str) -> EndpointMatch | None:
        """The catalog endpoint an API call matches, or None.

        The method is case-insensitive, the query string and a trailing slash are ignored,
        and a `:param` segment matches exactly one non-empty segment. When several templates
        match, the one with most literal segments wins, then the one listed first.
        """
        method = method.upper()
        bare = path.split("?", 1)[0].split("#", 1)[0].strip()
        parts = _segments(bare)
        for route in self._routes.get(method, ()):
            if len(route.segments) == len(parts) and all(
                part != "" if segment is None else part == segment
                for segment, part in zip(route.segments, parts, strict=True)
            ):
                return EndpointMatch(method, bare, route.template, route.scope)
        return None

    def counts(self) -> CatalogCounts:
        """How many scopes, endpoints (summed over scopes) and distinct events it holds."""
        endpoints = sum(len(entry.endpoints) for entry in self._scopes.values())
        return CatalogCounts(len(self._scopes), endpoints, len(self._event_scopes))

    def with_overlay(self, overlay: Mapping[str, Any]) -> Catalog:
        """A new catalog with the overlay's events and aliases added; this one is unchanged.

        `overlay` is `{"events": {event: scope}, "aliases": {payload_type: event}}`, both
        optional. Raises `CatalogError` on an unknown key, an event mapped to an unknown scope,
        an event the catalog already maps to another scope (an overlay adds, it never remaps),
        or an alias to an event that no scope unlocks.
        """
        try:
            parsed = _Overlay.model_validate(overlay)
        except ValidationError as exc:
            raise CatalogError(_first_error(exc)) from None
        added: dict[str, list[str]] = {}
        for event, scope in parsed.events.items():
            if scope not in self._scopes:
                raise CatalogError(f"event '{event}' maps to unknown scope '{scope}'")
            if scope in self._router_scopes:
                raise CatalogError(f"event '{event}' maps to the router's own scope '{scope}'")
            known = self._event_scopes.get(event, ())
            if known and scope not in known:
                raise CatalogError(
                    f"event '{event}' maps to '{scope}' but the catalog already requires "
                    f"'{known[0]}'; an overlay adds events, it does not remap them"
                )
            if not known:
                added.setdefault(scope, []).append(event)
        data = CatalogData(
            version=self._version,
            scopes=[
                entry.model_copy(update={"events": [*entry.events, *added.get(name, [])]})
                for name, entry in self._scopes.items()
            ],
            aliases={**self._aliases, **parsed.aliases},
            resource_keys={**self._resource_keys, **parsed.resource_keys},
        )
        return Catalog(data, router_scopes=self._router_scopes)

    def with_router_scope(self) -> Catalog:
        """This catalog and the router's own scope, `router.operations`, which unlocks the
        events of `ROUTER_EVENTS`; itself if it has it already. Raises `CatalogError` if the
        platform's catalog uses the name or one of the events."""
        if ROUTER_SCOPE in self._router_scopes:
            return self
        if ROUTER_SCOPE in self._scopes:
            raise CatalogError(f"scope '{ROUTER_SCOPE}' is the router's own; rename it")
        taken = [event for event in ROUTER_EVENTS if event in self._event_scopes]
        if taken:
            raise CatalogError(f"event '{taken[0]}' is the router's own; rename it")
        entry = ScopeEntry(name=ROUTER_SCOPE, access=[], endpoints=[], events=list(ROUTER_EVENTS))
        data = CatalogData(
            version=self._version,
            scopes=[*self._scopes.values(), entry],
            aliases=dict(self._aliases),
            resource_keys=dict(self._resource_keys),
        )
        return Catalog(data, router_scopes=self._router_scopes | {ROUTER_SCOPE})

    def router_scopes(self) -> list[ScopeEntry]:
        """The router's own scopes (not the platform's), with the events they unlock."""
        return [self._scopes[name] for name in sorted(self._router_scopes)]

    def resource_key(self, event: str) -> str | None:
        """The dotted payload path naming the resource `event` is about, or None."""
        return self._resource_keys.get(event)

    def to_data(self) -> dict[str, Any]:
        """The platform's catalog as JSON-able data in the data file's format (the router's
        own scopes left out); `Catalog(...)` round-trips."""
        return CatalogData(
            version=self._version,
            scopes=[e for name, e in self._scopes.items() if name not in self._router_scopes],
            aliases=dict(self._aliases),
            resource_keys=dict(self._resource_keys),
        ).model_dump()


def resource_value(payload: Mapping[str, Any], path: str) -> str | None:
    """The resource an event is about: the string or integer at dotted `path` in its payload;
    None when there is none (such an event is not ordered with others)."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def load_catalog(path: str | Path | None = None, overlay: str | Path | None = None) -> Catalog:
    """The catalog in force: the file at `path` (default: the shipped v1 catalog) + `overlay`.

    `path` may hold the JSON data file or a markdown scope table in the seed's format: text
    starting with `{` is JSON, anything else is parsed as a table, whose version is then the
    file's name without extension. `overlay` is a JSON object (see `Catalog.with_overlay`).
    Raises `CatalogError` naming the setting (`ROUTER_CATALOG`, `ROUTER_CATALOG_OVERLAY`),
    the file and the problem.
    """
    if path is None:
        source = "shipped catalog_v1.json"
        text = resources.files("subscriptions.data").joinpath("catalog_v1.json").read_text("utf-8")
        catalog = _catalog_from_text(text, version="v1", setting=CATALOG_SETTING, source=source)
    else:
        path = Path(path)
        text = _read_text(path, CATALOG_SETTING)
        catalog = _catalog_from_text(text, path.stem, CATALOG_SETTING, str(path))
    if overlay is None:
        return catalog
    overlay = Path(overlay)
    overlay_data = _parse_json(_read_text(overlay, OVERLAY_SETTING), OVERLAY_SETTING, str(overlay))
    try:
        return catalog.with_overlay(overlay_data)
    except CatalogError as exc:
        raise CatalogError(f"{OVERLAY_SETTING}: {overlay}: {exc}") from None


def _catalog_from_text(text: str, version: str, setting: str, source: str) -> Catalog:
    if text.lstrip().startswith("{"):
        raw = _parse_json(text, setting, source)
    else:
        try:
            raw = parse_markdown(text, version=version)
        except CatalogError as exc:
            raise CatalogError(f"{setting}: {source}: {exc}") from None
    try:
        return Catalog(CatalogData.model_validate(raw))
    except ValidationError as exc:
        raise CatalogError(f"{setting}: {source}: {_first_error(exc)}") from None
    except CatalogError as exc:
        raise CatalogError(f"{setting}: {source}: {exc}") from None


def _read_text(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CatalogError(f"{setting}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise CatalogError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _parse_json(text: str, setting: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{setting}: {source} is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise CatalogError(f"{setting}: {source} must hold a JSON object")
    return value


def _first_error(exc: ValidationError) -> str:
    """One line for a validation failure: the first problem, and how many more there are."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        line = f"unknown key '{where}'"
    else:
        message = first["msg"].removeprefix("Value error, ")
        line = f"{where}: {message}" if where else message
    more = len(errors) - 1
    return f"{line} (and {more} more problem{'s' if more > 1 else ''})" if more else line


def _segments(path: str) -> list[str]:
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def _is_param(segment: str) -> bool:
    return segment.startswith(":") or (segment.startswith("{") and segment.endswith("}"))
