"""The markdown scope-table parser: the seed's damage is repaired, garbage never crashes it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.catalog import Catalog, CatalogData, CatalogError
from subscriptions.catalog_parser import parse_markdown

SEED = Path(__file__).parent / "fixtures" / "scopes_v1.md"
HEADER = (
    "| Scope | Endpoints de la API | Eventos de Webhook | Tipo de acceso |\n|---|---|---|---|\n"
)


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    return parse_markdown(SEED.read_text(encoding="utf-8"))


def scope(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry for entry in data["scopes"] if entry["name"] == name)


def parse_table(rows: str) -> dict[str, Any]:
    return parse_markdown(HEADER + rows)


def test_seed_parses_to_the_shipped_catalog(seed: dict[str, Any]) -> None:
    shipped = json.loads(
        resources.files("subscriptions.data").joinpath("catalog_v1.json").read_text("utf-8")
    )
    assert seed["version"] == shipped["version"] == "v1"
    assert seed["scopes"] == shipped["scopes"]


def test_seed_has_33_scopes_99_endpoints_18_events(seed: dict[str, Any]) -> None:
    assert len(seed["scopes"]) == 33
    assert sum(len(entry["endpoints"]) for entry in seed["scopes"]) == 99
    assert sum(len(entry["events"]) for entry in seed["scopes"]) == 18


def test_seed_keeps_table_order_of_scopes(seed: dict[str, Any]) -> None:
    names = [entry["name"] for entry in seed["scopes"]]
    assert names[:3] == ["businesses.readonly", "businesses.write", "calendars.write"]
    assert names[-1] == "workflows.readonly"


def test_parser_produces_no_aliases(seed: dict[str, Any]) -> None:
    assert seed["aliases"] == {}


def test_version_is_taken_from_the_argument() -> None:
    assert parse_table("| contacts.readonly | GET /contacts/ | Sub-cuenta |\n")["version"] == "v1"
    assert parse_markdown(HEADER + "| a.write | Company |", version="v2")["version"] == "v2"


def test_stray_space_in_path_is_repaired(seed: dict[str, Any]) -> None:
    endpoints = scope(seed, "calendars/events.write")["endpoints"]
    assert "PUT /calendars/events/appointments/:eventId" in endpoints
    assert not any(" /:" in endpoint for entry in seed["scopes"] for endpoint in entry["endpoints"])


def test_trailing_slash_is_kept_as_written(seed: dict[str, Any]) -> None:
    assert scope(seed, "calendars.readonly")["endpoints"][0] == "GET /calendars/"


def test_access_types_are_only_sub_account_and_company(seed: dict[str, Any]) -> None:
    assert {a for entry in seed["scopes"] for a in entry["access"]} == {"Sub-Account", "Company"}


def test_sub_account_company_cell_gives_both_access_types(seed: dict[str, Any]) -> None:
    assert scope(seed, "locations.readonly")["access"] == ["Sub-Account", "Company"]
    assert scope(seed, "locations.write")["access"] == ["Company"]
    assert scope(seed, "contacts.write")["access"] == ["Sub-Account"]


def test_scope_with_only_events_has_no_endpoints(seed: dict[str, Any]) -> None:
    entry = scope(seed, "conversations/message.readonly")
    assert entry["endpoints"] == []
    assert entry["events"] == ["InboundMessage", "OutboundMessage"]


def test_shifted_access_type_in_events_column_is_an_access_type() -> None:
    data = parse_table("| businesses.readonly | GET /businesses | Sub-cuenta | |\n")
    assert data["scopes"] == [
        {
            "name": "businesses.readonly",
            "access": ["Sub-Account"],
            "endpoints": ["GET /businesses"],
            "events": [],
        }
    ]


def test_shifted_event_in_endpoints_column_is_an_event() -> None:
    data = parse_table("| conversations/message.readonly | InboundMessage | Sub-cuenta | |\n")
    assert data["scopes"][0]["events"] == ["InboundMessage"]
    assert data["scopes"][0]["endpoints"] == []


def test_scope_in_a_later_column_still_names_the_row() -> None:
    data = parse_table(
        "| links.readonly | GET /links/ | Sub-cuenta |\n"
        "| GET /forms/ | forms.readonly | Company |\n"
    )
    assert scope(data, "forms.readonly")["endpoints"] == ["GET /forms/"]
    assert scope(data, "links.readonly")["endpoints"] == ["GET /links/"]


def test_continuation_row_with_only_an_endpoint_belongs_to_scope_above() -> None:
    data = parse_table(
        "| links.write | POST /links/ | Sub-cuenta | |\n| PUT /links/:linkId | Sub-cuenta | ||\n"
    )
    assert data["scopes"][0]["endpoints"] == ["POST /links/", "PUT /links/:linkId"]


def test_continuation_row_with_only_an_event_belongs_to_scope_above() -> None:
    data = parse_table(
        "| opportunities.readonly | GET /opportunities/:id | OpportunityCreate | Sub-cuenta |\n"
        "| OpportunityStatusUpdate |\n"
        "| contacts.write | POST /contacts/ | Sub-cuenta |\n"
    )
    assert scope(data, "opportunities.readonly")["events"] == [
        "OpportunityCreate",
        "OpportunityStatusUpdate",
    ]
    assert scope(data, "contacts.write")["events"] == []


def test_continuation_row_with_only_an_access_type_belongs_to_scope_above() -> None:
    data = parse_table("| users.readonly | GET /users/ | Sub-cuenta |\n| | | Company |\n")
    assert data["scopes"][0]["access"] == ["Sub-Account", "Company"]


def test_row_missing_trailing_cells_is_read() -> None:
    data = parse_table("| workflows.readonly | GET /workflows/\n| GET /workflows/:id\n")
    assert data["scopes"][0]["endpoints"] == ["GET /workflows/", "GET /workflows/:id"]
    assert data["scopes"][0]["access"] == []


def test_items_above_the_first_scope_are_ignored() -> None:
    data = parse_table(
        "| GET /orphan | Orphaned | Company |\n| a.readonly | GET /a | Sub-cuenta |\n"
    )
    assert data["scopes"] == [
        {"name": "a.readonly", "access": ["Sub-Account"], "endpoints": ["GET /a"], "events": []}
    ]


def test_prose_around_the_table_is_ignored() -> None:
    text = "Scopes\nSee docs.example.com | for more.\n" + HEADER
    text += "| a.readonly | GET /a | Sub-cuenta |\n¿Te sirvio este artículo? ContactCreate\n"
    assert [entry["name"] for entry in parse_markdown(text)["scopes"]] == ["a.readonly"]


def test_several_items_in_one_cell_are_all_kept() -> None:
    data = parse_table(
        "| a.readonly | GET /a<br>GET /b | ContactCreate, ContactDelete | Sub-cuenta |"
    )
    assert data["scopes"][0]["endpoints"] == ["GET /a", "GET /b"]
    assert data["scopes"][0]["events"] == ["ContactCreate", "ContactDelete"]


def test_method_is_upper_cased_and_code_marks_are_dropped() -> None:
    data = parse_table("| `a.readonly` | `get /a/:id` | **Sub-Account** |")
    assert data["scopes"][0]["name"] == "a.readonly"
    assert data["scopes"][0]["endpoints"] == ["GET /a/:id"]
    assert data["scopes"][0]["access"] == ["Sub-Account"]


def test_scope_named_twice_is_merged() -> None:
    data = parse_table(
        "| a.readonly | GET /a |\n| b.write | POST /b |\n| a.readonly | GET /a | GET /c |\n"
    )
    assert [entry["name"] for entry in data["scopes"]] == ["a.readonly", "b.write"]
    assert data["scopes"][0]["endpoints"] == ["GET /a", "GET /c"]


def test_text_without_a_scope_table_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="no scope table"):
        parse_markdown("Just prose.\n| Scope | Events |\n|---|---|\n")


_CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "contacts.readonly",
            "locations/customValues.write",
            "GET /contacts/:contactId",
            "PUT /calendars/events/appointments /:eventId",
            "post /x/ y",
            "ContactCreate",
            "Sub-cuenta",
            "Sub-Account, Company",
            "Company",
            "---",
            ":--:",
            "`a.read`",
            "A<br>B",
            "\\|",
        ]
    ),
    st.text(max_size=20),
)
_ROWS = st.lists(st.lists(_CELLS, max_size=6), max_size=12)


def _check_total(text: str) -> None:
    try:
        data = parse_markdown(text)
    except CatalogError:
        return
    Catalog(CatalogData.model_validate(data))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_nothing_but_catalog_error(text: str) -> None:
    _check_total(text)


@settings(max_examples=200, deadline=None)
@given(_ROWS, st.booleans())
def test_random_tables_give_a_valid_catalog_or_catalog_error(
    rows: list[list[str]], with_header: bool
) -> None:
    lines = ["| " + " | ".join(cells) + " |" for cells in rows]
    _check_total((HEADER if with_header else "") + "\n".join(lines))
