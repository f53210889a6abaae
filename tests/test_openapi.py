"""`/openapi.json`: a valid OpenAPI 3.1 document of exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from router.http.openapi import build_openapi
from router.http.operations import Resource


@pytest.fixture
async def document(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs_in(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs_in(value)]
    return []


def error_schema(response: dict[str, Any]) -> str:
    return response["content"]["application/json"]["schema"]["$ref"]


async def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1.")


async def test_document_is_served_without_a_token_and_identically_each_time(
    client: TestClient,
) -> None:
    first = await (await client.get("/openapi.json")).read()
    second = await (await client.get("/openapi.json")).read()
    assert first == second


async def test_every_served_route_is_documented_with_its_methods(
    app: web.Application, document: dict[str, Any]
) -> None:
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    # The web UI's files are served undocumented: they are no API.
    ui_files = {("/ui", "get"), ("/ui/", "get"), ("/ui/{name}", "get")}
    assert served == documented | ui_files
    assert not documented & ui_files
    assert ("/v1/api-keys/{id}/regenerate", "post") in documented
    assert ("/openapi.json", "get") in documented


async def test_every_reference_resolves_to_a_component(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for ref in refs_in(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas


async def test_scoped_operation_declares_bearer_auth_scope_and_auth_errors(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/v1/api-keys"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert operation["x-required-scope"] == "write_api_keys"
    assert "`write_api_keys`" in operation["description"]
    for status in ("401", "403", "400", "422", "500"):
        assert error_schema(operation["responses"][status]) == "#/components/schemas/ErrorEnvelope"
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }


async def test_public_operation_needs_no_token_and_has_no_auth_errors(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/healthz"]["get"]
    assert operation["security"] == []
    assert "x-required-scope" not in operation
    assert set(operation["responses"]) == {"200", "400", "500"}


async def test_body_and_response_reference_their_models(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/api-keys"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ApiKeyCreate"}
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/ApiKeyCreated"}
    scopes = document["components"]["schemas"]["ApiKeyCreate"]["properties"]["scopes"]
    assert "write_api_keys" in scopes["items"]["enum"]


async def test_path_parameters_are_required_bounded_strings(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/api-keys/{id}"]["get"]
    assert operation["parameters"] == [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        }
    ]


async def test_query_model_fields_become_query_parameters(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/v1/api-keys"]["get"]["parameters"]
    by_name = {p["name"]: p for p in parameters}
    assert set(by_name) == {"limit", "cursor"}
    assert all(p["in"] == "query" and p["required"] is False for p in parameters)
    assert by_name["limit"]["schema"]["maximum"] == 100


async def test_required_query_field_is_a_required_parameter(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/v1/catalog/endpoints"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in parameters} == {"method": True, "path": True}


async def test_no_content_response_has_no_body(document: dict[str, Any]) -> None:
    deleted = document["paths"]["/v1/api-keys/{id}"]["delete"]["responses"]["204"]
    assert "content" not in deleted


async def test_declared_error_statuses_are_documented(document: dict[str, Any]) -> None:
    responses = document["paths"]["/v1/api-keys/{id}"]["patch"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "404", "408", "413", "422", "500", "503"}


async def test_operation_ids_are_handler_names_and_tags_are_resources(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/v1/api-keys/{id}/regenerate"]["post"]
    assert operation["operationId"] == "regenerate_api_key"
    assert operation["tags"] == ["api-keys"]
    assert {"name": "api-keys"} in document["tags"]


def test_two_handlers_with_one_name_are_refused() -> None:
    first, second = Resource("a"), Resource("b")

    async def same(request: web.Request) -> web.Response:
        return web.Response()

    first.get("/a", summary="a", scope=None)(same)
    second.get("/b", summary="b", scope=None)(same)
    with pytest.raises(ValueError, match="same"):
        build_openapi([first, second])
