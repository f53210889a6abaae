"""The OpenAPI 3.1 document of the HTTP surface, generated from the declared operations.

Nothing here is written by hand: paths, parameters, bodies and responses come from each
`Operation` (router/operations.py), schemas from its pydantic models, and every error
response from `ErrorEnvelope` (router/errors.py). A route that is served is documented,
because both come from the same `RESOURCES`.

Each app serves the document of its own scope catalog: a field marked with `catalog_names`
(a platform scope, an event name) is listed with the catalog's names as its `enum`, so a
client generated from the document cannot build a name the server would refuse. Likewise a
field marked `subscriber_url` gets the URL rule of the app's own settings as its `pattern`
(address literals only where private targets are allowed).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, WithJsonSchema
from pydantic.json_schema import models_json_schema

from router.core.targets import url_pattern
from router.core.text import JsonSchemaExtra
from router.http.errors import ErrorEnvelope
from router.http.operations import ANY_TOKEN, Operation, Resource
from subscriptions.catalog import Catalog, load_catalog
from subscriptions.filters import json_schemas as filter_schemas

OPENAPI_VERSION = "3.1.0"
TITLE = "webhook-router"
API_VERSION = "0.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"

# aiohttp path variables, optionally with a regex: `{id}`, `{name:[a-z]+}`.
_PATH_PARAM = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")

JsonMode = Literal["validation", "serialization"]
CatalogNames = Literal["scopes", "events", "events and aliases"]

_CATALOG_NAMES = "x-catalog-names"  # replaced by the catalog's names; never served
_SUBSCRIBER_URL = "x-subscriber-url"  # replaced by the URL rule's pattern; never served


def catalog_names(kind: CatalogNames) -> JsonSchemaExtra:
    """Marks a string as one of the catalog's names (for `Annotated`): its scopes, its
    events, or its events and payload-type aliases. The document lists them as the `enum`;
    the handler checks the same catalog."""
    return JsonSchemaExtra(((_CATALOG_NAMES, kind),))


def _ref(name: str) -> str:
    return REF_TEMPLATE.format(model=name)


# A payload filter's grammar is recursive and bounded in depth, which pydantic cannot
# generate; `subscriptions.filters` states it, and the document carries it as components.
PAYLOAD_FILTER = WithJsonSchema({"$ref": _ref("PayloadFilter")})


def subscriber_url() -> JsonSchemaExtra:
    """Marks a string as a subscriber URL (for `Annotated`): the document states the rule
    the handler applies for the app's `ROUTER_ALLOW_PRIVATE_TARGETS` as its `pattern`."""
    return JsonSchemaExtra(((_SUBSCRIBER_URL, True),))


def build_openapi(
    resources: Iterable[Resource],
    catalog: Catalog | None = None,
    *,
    allow_private_targets: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every operation of `resources`, naming the scopes and
    events of `catalog` (default: the shipped one) wherever one is taken, and the subscriber
    URL rule for `allow_private_targets`.

    Raises ValueError if two handlers share a name (operationIds must be unique).
    """
    resource_list = [r for r in resources if any(op.documented for op in r.operations)]
    operations = [op for r in resource_list for op in r.operations if op.documented]
    refs, schemas = _schemas(operations)
    schemas.update(filter_schemas(_ref))
    _list_catalog_names(schemas, catalog or load_catalog())
    _state_url_rule(schemas, url_pattern(allow_private_targets))
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for op in operations:
        document_op = _operation(op, refs, schemas)
        if document_op["operationId"] in seen_ids:
            raise ValueError(f"two operations are named {document_op['operationId']!r}")
        seen_ids.add(document_op["operationId"])
        paths.setdefault(_PATH_PARAM.sub(r"{\1}", op.path), {})[op.method.lower()] = document_op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": "Scope-aware webhook router: accepts platform events and delivers "
            "each only to the subscribers entitled to it. Operator routes need a bearer token "
            "holding the operation's scope (`x-required-scope`).",
        },
        "tags": [{"name": tag} for tag in dict.fromkeys(r.tag for r in resource_list)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}},
        },
    }


def _schemas(
    operations: list[Operation],
) -> tuple[dict[tuple[type[BaseModel], JsonMode], dict[str, Any]], dict[str, Any]]:
    """Each (model, mode)'s reference, and every schema for `components.schemas`."""
    wanted: dict[tuple[type[BaseModel], JsonMode], None] = {(ErrorEnvelope, "serialization"): None}
    for op in operations:
        for model, mode in (
            (op.query, "validation"),
            (op.body or op.documented_body, "validation"),
            (op.response, "serialization"),
        ):
            if model is not None:
                wanted[(model, mode)] = None
    refs, top = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    return refs, top.get("$defs", {})


def _list_catalog_names(node: Any, catalog: Catalog) -> None:
    """Turn every `catalog_names` mark under `node` into the catalog's names, in place."""
    if isinstance(node, dict):
        kind = node.pop(_CATALOG_NAMES, None)
        if kind is not None:
            events = sorted(catalog.event_names())
            node["enum"] = {
                "scopes": list(catalog.scopes),
                "events": events,
                "events and aliases": sorted({*events, *catalog.aliases}),
            }[kind]
        for value in node.values():
            _list_catalog_names(value, catalog)
    elif isinstance(node, list):
        for value in node:
            _list_catalog_names(value, catalog)


def _state_url_rule(node: Any, pattern: str) -> None:
    """Turn every `subscriber_url` mark under `node` into `pattern`, in place."""
    if isinstance(node, dict):
        if node.pop(_SUBSCRIBER_URL, None):
            node["pattern"] = pattern
        for value in node.values():
            _state_url_rule(value, pattern)
    elif isinstance(node, list):
        for value in node:
            _state_url_rule(value, pattern)


def _component(ref: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return schemas[ref["$ref"].removeprefix(REF_TEMPLATE.format(model=""))]


def _operation(
    op: Operation,
    refs: dict[tuple[type[BaseModel], JsonMode], dict[str, Any]],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    name = op.handler.__name__
    description = inspect.getdoc(op.handler) or op.summary
    document: dict[str, Any] = {
        "operationId": name,
        "summary": op.summary,
        "tags": [op.tag],
    }
    parameters = [
        # Ids are short; the bound keeps a conforming URL within aiohttp's request line.
        {
            "name": param,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        }
        for param in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        query_schema = _component(refs[(op.query, "validation")], schemas)
        required = set(query_schema.get("required", ()))
        for field, schema in query_schema.get("properties", {}).items():
            parameter: dict[str, Any] = {
                "name": field,
                "in": "query",
                "required": field in required,
                "schema": schema,
            }
            if "description" in schema:
                parameter["description"] = schema["description"]
            parameters.append(parameter)
    if parameters:
        document["parameters"] = parameters
    body = op.body or op.documented_body
    if body is not None:
        document["requestBody"] = {
            # A parsed body may be left out (it reads as `{}`) when none of its fields is
            # required; a body the handler reads itself (ingest) never may.
            "required": op.body is None
            or any(field.is_required() for field in body.model_fields.values()),
            "content": {"application/json": {"schema": refs[(body, "validation")]}},
        }
    document["responses"] = _responses(op, refs)
    if op.scope is not None:
        document["security"] = [{SECURITY_SCHEME: []}]
        document["x-subscriber-bound-key"] = op.bound
        description += f"\n\n{_BOUND_KEY[op.bound]}"
    if op.scope == ANY_TOKEN:
        description += "\n\nAny live token may call it, whatever its scopes."
    elif op.scope is not None:
        document["x-required-scope"] = op.scope
        description += f"\n\nRequires operator scope `{op.scope}`."
    else:
        # Public, or authenticated by the platform's signatures rather than a bearer token.
        document["security"] = []
    document["description"] = description
    return document


# What `x-subscriber-bound-key` means, said in each operation's description.
_BOUND_KEY = {
    "deny": "A subscriber-bound API key is refused (403 `SUBSCRIBER_BOUND`).",
    "subscriber_path": "A subscriber-bound API key may call it for its own subscriber only; "
    "any other `subscriber_id` is 404.",
    "filter": "A subscriber-bound API key sees and changes only its own subscriber's data; "
    "anything else is left out, or 404.",
    "open": "A subscriber-bound API key may call it: it holds no subscriber's data.",
}


def _responses(
    op: Operation, refs: dict[tuple[type[BaseModel], JsonMode], dict[str, Any]]
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if op.response is not None:
        responses[str(op.status)] = {
            "description": HTTPStatus(op.status).phrase,
            "content": {"application/json": {"schema": refs[(op.response, "serialization")]}},
        }
    else:
        responses[str(op.status)] = {"description": HTTPStatus(op.status).phrase}
    error = {"application/json": {"schema": refs[(ErrorEnvelope, "serialization")]}}
    # 400 can come from any request (a malformed request line or header, before routing).
    statuses = set(op.errors) | {400, 500}
    if op.scope is not None:
        # Operator routes read or write the store, which may be unavailable for a while.
        statuses |= {401, 403, 503}
    if op.body is not None or op.documented_body is not None:
        statuses |= {408, 413}
    for status, description in op.extra_responses.items():
        entry: dict[str, Any] = {"description": description}
        if status >= 400:
            entry["content"] = error
            statuses.discard(status)
        responses[str(status)] = entry
    for status in sorted(statuses):
        responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": error}
    return dict(sorted(responses.items()))
