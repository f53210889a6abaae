"""The catalog in force: exact event -> scope requirements, endpoint matching, overlays, loading."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from subscriptions.catalog import Catalog, CatalogData, CatalogError, EndpointMatch, load_catalog

SEED = Path(__file__).parent / "fixtures" / "scopes_v1.md"

EVENT_SCOPES = [
    ("CampaignStatusUpdate", "campaigns.readonly"),
    ("ContactCreate", "contacts.readonly"),
    ("ContactDelete", "contacts.readonly"),
    ("ContactDndUpdate", "contacts.readonly"),
    ("ContactTagUpdate", "contacts.readonly"),
    ("NoteCreate", "contacts.readonly"),
    ("NoteDelete", "contacts.readonly"),
    ("TaskCreate", "contacts.readonly"),
    ("TaskDelete", "contacts.readonly"),
    ("ConversationUnreadWebhook", "conversations.readonly"),
    ("InboundMessage", "conversations/message.readonly"),
    ("OutboundMessage", "conversations/message.readonly"),
    ("ConversationProviderOutboundMessage", "conversations/message.write"),
    ("OpportunityCreate", "opportunities.readonly"),
    ("OpportunityDelete", "opportunities.readonly"),
    ("OpportunityStageUpdate", "opportunities.readonly"),
    ("OpportunityStatusUpdate", "opportunities.readonly"),
    ("OpportunityMonetaryValueUpdate", "opportunities.readonly"),
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_shipped_catalog_counts(catalog: Catalog) -> None:
    assert catalog.version == "v1"
    assert tuple(catalog.counts()) == (33, 99, 18)
    assert str(catalog.counts()) == "33 scopes, 99 endpoints, 18 events"


@pytest.mark.parametrize(("event", "scope"), EVENT_SCOPES)
def test_event_requires_its_scope(catalog: Catalog, event: str, scope: str) -> None:
    assert catalog.required_scope(event) == scope
    assert catalog.scopes_unlocking(event) == {scope}


def test_event_names_are_exactly_the_18_pinned_events(catalog: Catalog) -> None:
    assert catalog.event_names() == {event for event, _ in EVENT_SCOPES}


def test_write_scope_does_not_imply_readonly(catalog: Catalog) -> None:
    assert catalog.required_scope("ConversationProviderOutboundMessage") == (
        "conversations/message.write"
    )
    assert "conversations/message.write" not in catalog.scopes_unlocking("InboundMessage")
    assert catalog.scopes_unlocking("InboundMessage") == {"conversations/message.readonly"}


def test_unknown_event_requires_no_scope(catalog: Catalog) -> None:
    assert catalog.required_scope("ContactUpdate") is None
    assert catalog.scopes_unlocking("ContactUpdate") == set()


def test_shipped_alias_maps_unread_update_payload_to_its_event(catalog: Catalog) -> None:
    assert dict(catalog.aliases) == {"ConversationUnreadUpdate": "ConversationUnreadWebhook"}
    assert catalog.event_for_payload_type("ConversationUnreadUpdate") == "ConversationUnreadWebhook"


def test_payload_type_without_alias_is_its_own_event(catalog: Catalog) -> None:
    assert catalog.event_for_payload_type("ContactCreate") == "ContactCreate"


def test_required_scope_does_not_resolve_aliases(catalog: Catalog) -> None:
    assert catalog.required_scope("ConversationUnreadUpdate") is None


def test_access_and_is_scope(catalog: Catalog) -> None:
    assert catalog.access("locations.readonly") == ["Sub-Account", "Company"]
    assert catalog.access("snapshots.readonly") == ["Company"]
    assert catalog.is_scope("locations/customValues.write")
    assert not catalog.is_scope("contacts.reed")
    with pytest.raises(KeyError):
        catalog.access("contacts.reed")


def test_scopes_are_in_table_order_and_read_only(catalog: Catalog) -> None:
    assert list(catalog.scopes)[:2] == ["businesses.readonly", "businesses.write"]
    with pytest.raises(TypeError):
        catalog.scopes["x.readonly"] = catalog.scopes["businesses.readonly"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        catalog.version = "v2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("method", "path", "scope", "template"),
    [
        ("GET", "/contacts/abc123", "contacts.readonly", "GET /contacts/:contactId"),
        (
            "GET",
            "/contacts/abc/tasks/t1",
            "contacts.readonly",
            "GET /contacts/:contactId/tasks/:taskId",
        ),
        (
            "PUT",
            "/contacts/abc/tasks/t1/completed",
            "contacts.write",
            "PUT /contacts/:contactId/tasks/:taskId/completed",
        ),
        ("GET", "/contacts/", "contacts.readonly", "GET /contacts/"),
        ("GET", "/contacts", "contacts.readonly", "GET /contacts/"),
        ("GET", "/businesses/", "businesses.readonly", "GET /businesses"),
        ("get", "/users/u1", "users.readonly", "GET /users/:userId"),
        ("GET", "/calendars/groups", "calendars.readonly", "GET /calendars/groups"),
        (
            "PUT",
            "/calendars/events/appointments/e1",
            "calendars/events.write",
            "PUT /calendars/events/appointments/:eventId",
        ),
    ],
)
def test_request_matches_endpoint_template(
    catalog: Catalog, method: str, path: str, scope: str, template: str
) -> None:
    match = catalog.scope_for_request(method, path)
    assert match is not None
    assert (match.scope, match.template, match.method) == (scope, template, method.upper())


def test_literal_segment_beats_parameter(catalog: Catalog) -> None:
    remove_all = catalog.scope_for_request("DELETE", "/contacts/c1/campaigns/removeAll")
    one = catalog.scope_for_request("DELETE", "/contacts/c1/campaigns/k1")
    assert remove_all is not None and one is not None
    assert remove_all.template == "DELETE /contacts/:contactId/campaigns/removeAll"
    assert one.template == "DELETE /contacts/:contactId/campaigns/:campaignId"


def test_literal_route_beats_parameter_route_listed_first(catalog: Catalog) -> None:
    match = catalog.scope_for_request("GET", "/calendars/groups")
    assert match is not None and match.template == "GET /calendars/groups"


def test_query_string_is_ignored(catalog: Catalog) -> None:
    assert catalog.scope_for_request("GET", "/contacts/abc?locationId=x&a=/b") == EndpointMatch(
        method="GET",
        path="/contacts/abc",
        template="GET /contacts/:contactId",
        scope="contacts.readonly",
    )


def test_parameter_matches_one_non_empty_segment_only(catalog: Catalog) -> None:
    assert catalog.scope_for_request("PUT", "/contacts//tasks/t1") is None
    assert catalog.scope_for_request("GET", "/contacts/a/b/c/d/e") is None


def test_unknown_method_or_path_matches_nothing(catalog: Catalog) -> None:
    assert catalog.scope_for_request("PATCH", "/contacts/abc") is None
    assert catalog.scope_for_request("GET", "/nowhere") is None
    assert catalog.scope_for_request("GET", "") is None


def test_overlay_adds_an_event(catalog: Catalog) -> None:
    extended = catalog.with_overlay({"events": {"ContactUpdate": "contacts.readonly"}})
    assert extended.required_scope("ContactUpdate") == "contacts.readonly"
    assert "ContactUpdate" in extended.event_names()
    contacts = next(s for s in extended.to_data()["scopes"] if s["name"] == "contacts.readonly")
    assert contacts["events"][-1] == "ContactUpdate"
    assert catalog.required_scope("ContactUpdate") is None


def test_overlay_to_unknown_scope_is_refused_naming_event_and_scope(catalog: Catalog) -> None:
    with pytest.raises(
        CatalogError, match=r"event 'ContactUpdate' maps to unknown scope 'contacts\.reed'"
    ):
        catalog.with_overlay({"events": {"ContactUpdate": "contacts.reed"}})


def test_overlay_cannot_remap_a_table_event(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"already requires 'conversations/message\.readonly'"):
        catalog.with_overlay({"events": {"InboundMessage": "conversations/message.write"}})


def test_overlay_repeating_a_table_mapping_changes_nothing(catalog: Catalog) -> None:
    same = catalog.with_overlay({"events": {"InboundMessage": "conversations/message.readonly"}})
    assert same.to_data() == catalog.to_data()


def test_overlay_alias_resolves_to_overlay_event(catalog: Catalog) -> None:
    extended = catalog.with_overlay(
        {"events": {"AppInstall": "locations.readonly"}, "aliases": {"INSTALL": "AppInstall"}}
    )
    assert extended.event_for_payload_type("INSTALL") == "AppInstall"
    assert (
        extended.required_scope(extended.event_for_payload_type("INSTALL")) == "locations.readonly"
    )
    assert extended.aliases["ConversationUnreadUpdate"] == "ConversationUnreadWebhook"


def test_overlay_alias_to_event_without_scope_is_refused(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="alias 'INSTALL' points to event 'AppInstall'"):
        catalog.with_overlay({"aliases": {"INSTALL": "AppInstall"}})


def test_alias_hiding_an_event_is_refused(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="alias 'ContactCreate' would hide"):
        catalog.with_overlay({"aliases": {"ContactCreate": "ContactDelete"}})


def test_overlay_with_unknown_key_is_refused(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown key 'event'"):
        catalog.with_overlay({"event": {}})


def test_to_data_round_trips(catalog: Catalog) -> None:
    data = catalog.to_data()
    assert Catalog(CatalogData.model_validate(data)).to_data() == data
    json.dumps(data)


def test_scope_listed_twice_is_refused() -> None:
    entry = {"name": "a.readonly", "access": [], "endpoints": [], "events": []}
    with pytest.raises(CatalogError, match=r"scope 'a\.readonly' is listed twice"):
        Catalog(CatalogData.model_validate({"version": "x", "scopes": [entry, entry]}))


def test_markdown_file_loads_as_router_catalog(tmp_path: Path) -> None:
    table = shutil.copy(SEED, tmp_path / "scopes_v2.md")
    loaded = load_catalog(table)
    assert loaded.version == "scopes_v2"
    assert tuple(loaded.counts()) == (33, 99, 18)
    assert dict(loaded.aliases) == {}


def test_json_file_loads_as_router_catalog(tmp_path: Path, catalog: Catalog) -> None:
    data = catalog.to_data() | {"version": "custom"}
    loaded = load_catalog(write_json(tmp_path / "c.json", data))
    assert loaded.version == "custom"
    assert loaded.to_data() == data


def test_load_catalog_applies_overlay_file(tmp_path: Path) -> None:
    overlay = write_json(tmp_path / "o.json", {"events": {"ContactUpdate": "contacts.readonly"}})
    assert load_catalog(overlay=overlay).required_scope("ContactUpdate") == "contacts.readonly"


def test_overlay_file_error_names_setting_file_event_and_scope(tmp_path: Path) -> None:
    overlay = write_json(tmp_path / "o.json", {"events": {"ContactUpdate": "contacts.reed"}})
    with pytest.raises(CatalogError) as raised:
        load_catalog(overlay=overlay)
    message = str(raised.value)
    assert message.startswith("ROUTER_CATALOG_OVERLAY: ")
    assert str(overlay) in message
    assert "'ContactUpdate'" in message and "'contacts.reed'" in message


def test_missing_catalog_file_names_setting_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CatalogError, match=re.escape(f"ROUTER_CATALOG: cannot read {missing}")):
        load_catalog(missing)


def test_bad_json_overlay_names_setting_and_file(tmp_path: Path) -> None:
    overlay = tmp_path / "o.json"
    overlay.write_text("{not json", encoding="utf-8")
    with pytest.raises(
        CatalogError, match=re.escape(f"ROUTER_CATALOG_OVERLAY: {overlay} is not valid JSON")
    ):
        load_catalog(overlay=overlay)


def test_overlay_must_be_a_json_object(tmp_path: Path) -> None:
    overlay = write_json(tmp_path / "o.json", ["ContactUpdate"])
    with pytest.raises(CatalogError, match="must hold a JSON object"):
        load_catalog(overlay=overlay)


def test_invalid_catalog_data_is_one_line_error(tmp_path: Path) -> None:
    bad = {"version": "v9", "scopes": [{"name": "a.readonly", "access": ["Agency"]}]}
    with pytest.raises(CatalogError) as raised:
        load_catalog(write_json(tmp_path / "c.json", bad))
    message = str(raised.value)
    assert message.startswith(f"ROUTER_CATALOG: {tmp_path / 'c.json'}: scopes.0.access")
    assert "\n" not in message


def test_catalog_file_without_table_is_refused(tmp_path: Path) -> None:
    prose = tmp_path / "notes.md"
    prose.write_text("nothing to see\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"^ROUTER_CATALOG: .*no scope table"):
        load_catalog(prose)
