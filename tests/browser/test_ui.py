"""The web UI driven in Chromium: sign-in, every page, the portal's isolation, and replaying a
dead delivery, each checked through the API the UI calls (docs: README, "Web UI")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console, LiveRouter, until
from tests.conftest import ADMIN_TOKEN
from tests.payloads import COMPANY_ID, LOCATION_ID, OTHER_LOCATION_ID
from tests.receivers import Reply

OPERATOR_SCOPES_OF_PORTAL = (
    "read_subscribers",
    "read_deliveries",
    "write_deliveries",
    "read_events",
    "read_catalog",
)


@dataclass(frozen=True)
class Scene:
    """Subscribers and events every test may read (tests that change one restore it)."""

    healthy: dict[str, Any]
    failing: dict[str, Any]
    paused: dict[str, Any]
    dead_delivery: str
    own_event: str  # delivered to `healthy` only
    other_event: str  # delivered to `failing` only


@pytest.fixture(scope="module")
def scene(live: LiveRouter) -> Scene:
    live.receiver.program("/crm", then=Reply(500, body=b'{"error":"crm database offline"}'))
    healthy = live.subscribe("Billing sync", "/billing", ["contacts.readonly"])
    failing = live.subscribe(
        "CRM mirror",
        "/crm",
        ["contacts.readonly", "opportunities.readonly"],
        location_ids=[LOCATION_ID],
    )
    paused = live.subscribe(
        "Inbox bot", "/inbox", ["conversations.readonly"], company_id=COMPANY_ID
    )
    live.ok("PATCH", f"/v1/subscribers/{paused['id']}", {"status": "paused"})
    own_event = live.publish("ContactCreate", locationId=OTHER_LOCATION_ID)
    for event in ("ContactTagUpdate", "NoteCreate"):
        live.publish(event, locationId=OTHER_LOCATION_ID)
    other_event = live.publish("OpportunityCreate")
    dead_delivery = live.delivery_of(other_event, failing["id"])
    live.settled(dead_delivery, "dead")
    live.settled(live.delivery_of(own_event, healthy["id"]), "succeeded")
    return Scene(healthy, failing, paused, dead_delivery, own_event, other_event)


def signed_in(console: Console, hash_route: str = "") -> Any:
    console.open(hash_route)
    console.sign_in()
    expect(console.page.get_by_role("button", name="Sign out")).to_be_visible()
    return console.page


# ---------------------------------------------------------------- sign-in


def test_a_bad_token_is_refused_and_not_kept(console: Console) -> None:
    console.open()
    page = console.page
    expect(page.get_by_label("API token")).to_be_focused()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    console.shoot("sign-in")
    console.sign_in("not-a-token-anyone-issued")
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    expect(page.get_by_label("API token")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_an_operator_token_signs_in_kept_for_the_tab_only_and_signs_out(
    console: Console, scene: Scene
) -> None:
    page = signed_in(console)
    expect(page.get_by_role("heading", name="Subscribers", level=1)).to_be_focused()
    assert page.context.cookies() == []
    page.reload()  # the token survives a reload of the tab (session storage)
    expect(page.get_by_role("heading", name="Subscribers", level=1)).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


# ---------------------------------------------------------------- operator pages


def test_subscribers_list_shows_status_scopes_tenants_breaker_rate_and_last_error(
    console: Console, scene: Scene
) -> None:
    page = signed_in(console, "#/subscribers")
    failing = page.get_by_role("row").filter(has_text="CRM mirror")
    expect(failing).to_contain_text("active")
    expect(failing).to_contain_text("contacts.readonly, opportunities.readonly")
    expect(failing).to_contain_text(LOCATION_ID)
    expect(failing).to_contain_text("closed")
    expect(failing).to_contain_text("0% of 1")
    expect(failing).to_contain_text("HTTP 500")
    healthy = page.get_by_role("row").filter(has_text="Billing sync")
    expect(healthy).to_contain_text("100% of")
    paused = page.get_by_role("row").filter(has_text="Inbox bot")
    expect(paused).to_contain_text("paused")
    expect(paused).to_contain_text(f"company {COMPANY_ID}")
    console.shoot("subscribers")


def test_subscriber_page_shows_attempts_and_explains(console: Console, scene: Scene) -> None:
    page = signed_in(console, f"#/subscribers/{scene.failing['id']}")
    expect(page.get_by_role("heading", name="CRM mirror", level=1)).to_be_visible()
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text(scene.failing["url"])
    expect(facts).to_contain_text("whsec_****")
    expect(facts).to_contain_text("HTTP 500")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
    page.get_by_role("button", name=scene.dead_delivery).click()
    attempts = page.get_by_role("table", name=f"Attempts of {scene.dead_delivery}")
    expect(attempts.get_by_role("row")).to_have_count(4)  # a heading and three attempts
    expect(attempts).to_contain_text("500")
    expect(attempts).to_contain_text(" ms")
    expect(attempts).to_contain_text("crm database offline")

    page.get_by_label("Event type").select_option("ContactCreate")
    page.get_by_label("Location id").fill(OTHER_LOCATION_ID)
    page.get_by_role("button", name="Explain").click()
    verdict = page.locator("#explain-result")
    expect(verdict).to_contain_text("not entitled")
    expect(verdict.get_by_role("listitem")).not_to_have_count(0)
    page.get_by_label("Location id").fill(LOCATION_ID)
    page.get_by_role("button", name="Explain").click()
    expect(verdict).to_contain_text("entitled ContactCreate needs contacts.readonly")
    console.shoot("subscriber")


def test_pause_resume_grant_and_revoke_go_through_the_api(
    console: Console, live: LiveRouter, scene: Scene
) -> None:
    sub_id = scene.healthy["id"]
    page = signed_in(console, f"#/subscribers/{sub_id}")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert live.ok("GET", f"/v1/subscribers/{sub_id}")["status"] == "paused"
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    assert live.ok("GET", f"/v1/subscribers/{sub_id}")["status"] == "active"

    page.get_by_label("Scope", exact=True).select_option("campaigns.readonly")
    page.get_by_role("button", name="Grant").click()
    expect(page.get_by_role("status")).to_have_text("Granted campaigns.readonly.")
    assert "campaigns.readonly" in live.ok("GET", f"/v1/subscribers/{sub_id}")["scopes"]
    page.get_by_label("Scope", exact=True).select_option("campaigns.readonly")
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_have_text("Revoked campaigns.readonly.")
    assert "campaigns.readonly" not in live.ok("GET", f"/v1/subscribers/{sub_id}")["scopes"]


def test_replay_of_a_dead_delivery_from_the_ui_delivers_it(
    console: Console, live: LiveRouter, scene: Scene
) -> None:
    live.receiver.program("/flaky", then=500)
    sub = live.subscribe("Replay target", "/flaky", ["contacts.readonly"])
    event_id = live.publish("ContactCreate", locationId=OTHER_LOCATION_ID)
    delivery_id = live.delivery_of(event_id, sub["id"])
    live.settled(delivery_id, "dead")
    live.receiver.program("/flaky", then=200)

    page = signed_in(console, f"#/subscribers/{sub['id']}")
    page.get_by_role("button", name="Replay dead deliveries").click()
    expect(page.locator("#replay-result")).to_have_text("Requeued 1 dead deliveries.")
    delivered = live.settled(delivery_id, "succeeded")
    assert delivered["attempt_count"] == 4
    assert delivered["attempts"][-1]["status_code"] == 200


def test_events_are_filtered_and_show_their_deliveries(console: Console, scene: Scene) -> None:
    page = signed_in(console, "#/events")
    results = page.locator("#event-results")
    expect(results.get_by_role("button", name=scene.own_event)).to_be_visible()
    page.get_by_label("Type").select_option("OpportunityCreate")
    page.get_by_label("Location id").fill(LOCATION_ID)
    page.get_by_role("button", name="Search").click()
    expect(results.get_by_role("button", name=scene.own_event)).to_have_count(0)
    results.get_by_role("button", name=scene.other_event).click()
    deliveries = page.get_by_role("table", name=f"Deliveries of {scene.other_event}")
    expect(deliveries).to_contain_text(scene.failing["id"])
    expect(deliveries).to_contain_text("dead")
    page.get_by_label("Status").select_option("duplicate")
    page.get_by_role("button", name="Search").click()
    expect(results).to_have_text("No events match.")
    page.get_by_label("Status").select_option("")
    page.get_by_label("Type").select_option("")
    page.get_by_label("Location id").fill("")
    page.get_by_role("button", name="Search").click()
    results.get_by_role("button", name=scene.other_event).click()
    console.shoot("events")


def test_scope_catalog_lists_each_scope_and_its_events(console: Console, scene: Scene) -> None:
    page = signed_in(console, "#/catalog")
    expect(page.get_by_role("heading", name="Scope catalog", level=1)).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_text("contacts.readonly", exact=True))
    expect(row).to_contain_text("ContactCreate")
    console.shoot("catalog")


def test_live_counters_chart_accepted_delivered_failed_dead(
    console: Console, live: LiveRouter, scene: Scene
) -> None:
    # Ingest's counter: the router's own operational events are stored but not ingested.
    items = live.ok("GET", "/v1/events?limit=100")["items"]
    stored = sum(1 for e in items if not e["type"].startswith("router."))
    page = signed_in(console, "#/counters")
    counters = page.get_by_role("table", name="Counters of this router process")
    accepted = counters.get_by_role("row").filter(has_text="accepted")
    expect(accepted).to_contain_text(str(stored))
    dead = counters.get_by_role("row").filter(has_text="dead")
    expect(dead).to_have_text(re.compile(r"dead\s*[1-9]"))
    for _ in range(3):
        live.publish("NoteCreate", locationId=OTHER_LOCATION_ID)
    expect(accepted).to_contain_text(str(stored + 3))
    expect(page.get_by_role("img", name=re.compile(r"accepted [1-9]"))).to_be_visible()
    console.shoot("counters", settle_ms=8000)


def test_the_console_works_from_the_keyboard(console: Console, scene: Scene) -> None:
    console.open()
    page = console.page
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Subscribers", level=1)).to_be_focused()
    # From the page's heading, Shift+Tab walks back through the header to the nav's links.
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="Sign out")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Counters")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Scope catalog")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Events", level=1)).to_be_focused()
    expect(page.get_by_role("link", name="Events")).to_have_attribute("aria-current", "page")
    opener = page.locator("#event-results").get_by_role("button", name=scene.other_event)
    opener.focus()
    page.keyboard.press("Enter")
    expect(opener).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("table", name=f"Deliveries of {scene.other_event}")).to_be_visible()


# ---------------------------------------------------------------- the portal


def test_portal_shows_only_its_own_subscriber_whatever_the_url(
    console: Console, live: LiveRouter, scene: Scene
) -> None:
    token = live.bound_token(scene.healthy["id"], *OPERATOR_SCOPES_OF_PORTAL)
    asked: list[str] = []
    console.page.on("request", lambda request: asked.append(request.url))
    console.open(f"#/subscribers/{scene.failing['id']}")
    console.sign_in(token)
    page = console.page
    expect(page.get_by_role("heading", name="Billing sync", level=1)).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(["My subscriber", "My events"])
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_role("button", name="Grant")).to_have_count(0)
    expect(page.get_by_role("button", name="Replay dead deliveries")).to_be_visible()
    console.shoot("portal")

    for tampered in (
        f"#/subscribers/{scene.failing['id']}",
        "#/subscribers",
        "#/catalog",
        f"#/subscribers/{scene.healthy['id']}/../{scene.failing['id']}",
    ):
        console.go(tampered)
        expect(page).to_have_url(f"{live.base_url}/ui/#/subscribers/{scene.healthy['id']}")
        expect(page.get_by_role("heading", name="Billing sync", level=1)).to_be_visible()

    console.go("#/events")
    results = page.locator("#event-results")
    expect(results.get_by_role("button", name=scene.own_event)).to_be_visible()
    expect(results.get_by_role("button", name=scene.other_event)).to_have_count(0)
    results.get_by_role("button", name=scene.own_event).click()
    deliveries = page.get_by_role("table", name=f"Deliveries of {scene.own_event}")
    expect(deliveries).to_contain_text(scene.healthy["id"])

    assert "CRM mirror" not in page.content()
    assert scene.failing["id"] not in page.content()
    assert not [url for url in asked if scene.failing["id"] in url.split("#")[0]]


def test_portal_cannot_read_another_subscriber_even_by_calling_the_api(
    live: LiveRouter, scene: Scene
) -> None:
    token = live.bound_token(scene.healthy["id"], *OPERATOR_SCOPES_OF_PORTAL)
    for path in (
        f"/v1/subscribers/{scene.failing['id']}",
        f"/v1/subscribers/{scene.failing['id']}/health",
        f"/v1/deliveries/{scene.dead_delivery}",
        f"/v1/events/{scene.other_event}",
    ):
        status, _ = live.api("GET", path, token=token)
        assert status == 404, path
    status, answer = live.api("GET", "/v1/subscribers", token=token)
    assert status == 200
    assert [s["id"] for s in answer["items"]] == [scene.healthy["id"]]


# ---------------------------------------------------------------- a phone


def test_pages_fit_a_phone_screen(browser: Any, live: LiveRouter, scene: Scene) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        tab = Console(context.new_page(), live)
        page = signed_in(tab, "#/subscribers")
        expect(page.get_by_role("heading", name="Subscribers", level=1)).to_be_visible()
        for route, heading in (
            ("#/subscribers", "Subscribers"),
            (f"#/subscribers/{scene.failing['id']}", "CRM mirror"),
            ("#/events", "Events"),
        ):
            tab.go(route)
            expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
            # Wide tables scroll inside their own box; the page itself never does.
            width = until(
                lambda: page.evaluate("() => document.documentElement.scrollWidth"),
                lambda w: w <= 390,
            )
            assert width <= 390
        tab.go(f"#/subscribers/{scene.failing['id']}")
        expect(page.get_by_role("heading", name="CRM mirror", level=1)).to_be_visible()
        tab.shoot("phone-subscriber")
        assert not tab.errors
    finally:
        context.close()
