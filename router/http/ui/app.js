// The web console: hash routes over the /v1 API. An operator token sees every page; a
// subscriber-bound token (whoami's `subscriber_id`) sees its own subscriber's pages only.

import { ApiError, api, metrics, token } from "./api.js";
import { lineChart } from "./chart.js";
import { badge, definitions, field, h, select, table, when } from "./dom.js";

const DELIVERY_STATUSES = ["pending", "succeeded", "failed", "dead", "skipped"];
const EVENT_STATUSES = ["accepted", "duplicate", "unroutable"];
const COUNTER_POLL_MS = 2000;
const COUNTER_POINTS = 90; // three minutes of samples
const RATE_WINDOW_MS = 60000; // each point: the rate over the minute before it

const state = { me: null, catalog: null, counters: [], poll: null };
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ feedback

function announce(message) {
  $("status").textContent = message;
}

function showError(error) {
  const message = error instanceof ApiError && error.status === 401
    ? "That API token was not accepted (it is unknown, expired or revoked)."
    : error.message;
  $("error").textContent = message;
}

function clearError() {
  $("error").textContent = "";
}

// Runs an action, reporting its failure in the alert region instead of throwing.
async function attempt(action) {
  clearError();
  try {
    return await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return signOut(error);
    showError(error);
    return undefined;
  }
}

// ------------------------------------------------------------------ session

const can = (scope) => state.me?.scopes.includes(scope);
const portal = () => Boolean(state.me?.subscriber_id);

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  token.set(value);
  $("token").value = "";
  await start();
}

async function start() {
  clearError();
  try {
    state.me = await api("GET", "/v1/whoami");
  } catch (error) {
    token.clear();
    showError(error);
    $("token").focus();
    return;
  }
  $("sign-in").hidden = true;
  $("page").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = portal() ? `Portal · ${state.me.name}` : `Signed in as ${state.me.name}`;
  buildNav();
  await route();
}

function signOut(error) {
  token.clear();
  state.me = null;
  state.catalog = null;
  stopPolling();
  $("page").replaceChildren();
  $("page").hidden = true;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  if (error) showError(error);
  else clearError();
  window.location.hash = "";
  $("token").focus();
}

function buildNav() {
  const links = portal()
    ? [
        [`#/subscribers/${encodeURIComponent(state.me.subscriber_id)}`, "My subscriber"],
        ["#/events", "My events"],
      ]
    : [
        ["#/subscribers", "Subscribers"],
        ["#/events", "Events"],
        ["#/catalog", "Scope catalog"],
        ["#/counters", "Counters"],
      ];
  $("nav-links").replaceChildren(...links.map(([href, text]) => h("li", {}, h("a", { href }, text))));
  $("nav").hidden = false;
}

function markCurrent() {
  for (const link of $("nav-links").querySelectorAll("a")) {
    const current = window.location.hash.startsWith(link.getAttribute("href"));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ------------------------------------------------------------------ routing

// The route a hash names; a bound token is only ever shown its own subscriber, whatever the
// hash says (the API refuses the rest too, this just never asks).
function resolve(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (portal()) {
    const own = state.me.subscriber_id;
    if (parts[0] === "events" && parts.length === 1) return { page: eventsPage, args: [] };
    if (parts[0] !== "subscribers" || parts[1] !== own || parts.length > 2) {
      return { redirect: `#/subscribers/${encodeURIComponent(own)}` };
    }
    return { page: subscriberPage, args: [own] };
  }
  switch (parts[0]) {
    case "subscribers":
      return parts[1] ? { page: subscriberPage, args: [parts[1]] } : { page: subscribersPage, args: [] };
    case "events":
      return { page: eventsPage, args: [] };
    case "catalog":
      return { page: catalogPage, args: [] };
    case "counters":
      return { page: countersPage, args: [] };
    default:
      return { redirect: "#/subscribers" };
  }
}

async function route() {
  if (!state.me) return;
  const target = resolve(window.location.hash);
  if (target.redirect) {
    window.location.replace(target.redirect);
    return;
  }
  stopPolling();
  clearError();
  markCurrent();
  const page = $("page");
  page.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  await attempt(async () => {
    const content = await target.page(...target.args);
    page.replaceChildren(content);
    const heading = page.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
      document.title = `${heading.textContent} · webhook-router`;
    }
  });
}

async function catalog() {
  state.catalog ??= await api("GET", "/v1/catalog");
  return state.catalog;
}

function catalogEvents(data) {
  return [...new Set(data.scopes.flatMap((s) => s.events))].sort();
}

// ------------------------------------------------------------------ subscribers

function tenants(sub) {
  const parts = [];
  if (sub.company_id) parts.push(`company ${sub.company_id}`);
  if (sub.location_ids?.length) parts.push(`${sub.location_ids.length} location(s): ${sub.location_ids.join(", ")}`);
  return parts.length ? parts.join("; ") : "any";
}

function rate(health) {
  if (!health || health.success_rate === null) return "—";
  return `${Math.round(health.success_rate * 100)}% of ${health.sampled}`;
}

function lastError(health) {
  const failure = health?.last_failure;
  if (!failure) return "—";
  const what = failure.last_error || (failure.last_status_code ? `HTTP ${failure.last_status_code}` : failure.reason);
  return [what ?? failure.status, " · ", when(failure.updated_at)];
}

async function subscribersPage() {
  const list = await api("GET", "/v1/subscribers", { query: { limit: 100 } });
  const healths = await Promise.all(
    list.items.map((sub) => api("GET", `/v1/subscribers/${encodeURIComponent(sub.id)}/health`).catch(() => null)),
  );
  const rows = list.items.map((sub, i) => [
    h("a", { href: `#/subscribers/${encodeURIComponent(sub.id)}` }, sub.name),
    badge(sub.status),
    sub.scopes.join(", "),
    tenants(sub),
    healths[i] ? badge(healths[i].breaker.state.replace("_", "-"), `breaker-${healths[i].breaker.state}`) : "—",
    rate(healths[i]),
    lastError(healths[i]),
  ]);
  return h(
    "section",
    { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, "Subscribers"),
    table(
      "Subscribers",
      ["Name", "Status", "Scopes", "Tenants", "Breaker", "Success rate", "Last error"],
      rows,
      "No subscribers are registered.",
    ),
    list.next_cursor && h("p", { class: "empty" }, "Showing the first 100 subscribers."),
  );
}

async function subscriberPage(id) {
  const path = `/v1/subscribers/${encodeURIComponent(id)}`;
  let sub;
  try {
    sub = await api("GET", path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      return h("section", {}, h("h1", {}, "Subscriber not found"), h("p", {}, "No subscriber has this id."));
    }
    throw error;
  }
  const health = await api("GET", `${path}/health`).catch(() => null);
  // A portal key may hold no catalog scope: explain then takes a typed event name.
  const scopes = await catalog().catch(() => null);
  const section = h(
    "section",
    { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, sub.name, " ", badge(sub.status)),
    definitions([
      ["Id", h("code", {}, sub.id)],
      ["URL", h("code", {}, sub.url)],
      ["Scopes", sub.scopes.join(", ") || "none"],
      ["Events", sub.events ? sub.events.join(", ") : "every event of its scopes"],
      ["Tenants", tenants(sub)],
      ["Signing secret", h("code", { id: "secret" }, sub.secret)],
      ["Breaker", health ? `${health.breaker.state.replace("_", "-")} (${health.breaker.consecutive_failures} consecutive failures)` : "—"],
      ["Success rate", rate(health)],
      ["Last error", lastError(health)],
      sub.status_reason && ["Status reason", sub.status_reason],
    ].filter(Boolean)),
  );
  section.append(actions(sub, path, scopes));
  section.append(explainForm(path, scopes));
  section.append(await deliveriesSection(sub.id));
  return section;
}

function actions(sub, path, scopes) {
  const box = h("div", { class: "actions" });
  const operator = !portal() && can("write_subscribers");
  if (operator && sub.status !== "disabled") {
    const next = sub.status === "active" ? "paused" : "active";
    box.append(
      h("button", {
        type: "button",
        onclick: () => attempt(async () => {
          await api("PATCH", path, { body: { status: next } });
          announce(`Subscriber ${next === "paused" ? "paused" : "resumed"}.`);
          await route();
        }),
      }, next === "paused" ? "Pause" : "Resume"),
    );
  }
  if (can("write_deliveries")) {
    box.append(
      h("button", {
        type: "button",
        onclick: () => attempt(async () => {
          const result = await api("POST", `${path}/replay`, { body: { status: "dead" } });
          announce(`Requeued ${result.requeued} dead deliveries.`);
          $("replay-result").textContent = `Requeued ${result.requeued} dead deliveries.`;
        }),
      }, "Replay dead deliveries"),
    );
  }
  if (can("write_subscribers")) {
    box.append(
      h("button", {
        type: "button",
        class: "secondary",
        onclick: () => attempt(async () => {
          if (!window.confirm("Rotate the signing secret? The old one keeps signing for the grace period.")) return;
          const rotated = await api("POST", `${path}/secret/rotate`);
          $("replay-result").textContent = `New signing secret (shown once): ${rotated.secret}`;
          announce("Signing secret rotated.");
        }),
      }, "Rotate secret"),
    );
  }
  const wrap = h("section", { "aria-labelledby": "actions-title" }, h("h2", { id: "actions-title" }, "Actions"), box,
    h("p", { id: "replay-result", class: "result", "aria-live": "polite" }));
  if (operator && scopes) wrap.append(grantsForm(path, scopes));
  return wrap;
}

function grantsForm(path, data) {
  const picker = select("scope", data.scopes.map((s) => [s.name, s.name]));
  const change = (kind) => attempt(async () => {
    const scope = picker.value;
    await api("POST", `${path}/grants`, { body: { [kind]: [scope] } });
    announce(`${kind === "add" ? "Granted" : "Revoked"} ${scope}.`);
    await route();
  });
  return h(
    "form",
    { class: "inline", onsubmit: (e) => e.preventDefault(), "aria-label": "Grant or revoke a scope" },
    field("Scope", picker),
    h("button", { type: "button", onclick: () => change("add") }, "Grant"),
    h("button", { type: "button", class: "secondary", onclick: () => change("remove") }, "Revoke"),
  );
}

function explainForm(path, data) {
  const picker = data
    ? select("event", catalogEvents(data).map((e) => [e, e]))
    : h("input", { name: "event", required: true, autocomplete: "off" });
  const location = h("input", { name: "location_id", autocomplete: "off" });
  const company = h("input", { name: "company_id", autocomplete: "off" });
  const output = h("div", { id: "explain-result", "aria-live": "polite" });
  const submit = (event) => {
    event.preventDefault();
    attempt(async () => {
      const verdict = await api("GET", `${path}/explain`, {
        query: { event: picker.value, location_id: location.value.trim(), company_id: company.value.trim() },
      });
      output.replaceChildren(
        h("p", {}, badge(verdict.entitled ? "entitled" : "not entitled", verdict.entitled ? "succeeded" : "dead"),
          ` ${verdict.event} needs ${verdict.required_scope ?? "no known scope"}.`),
        h("ul", {}, verdict.reasons.map((r) => h("li", {}, r))),
      );
    });
  };
  return h(
    "section",
    { "aria-labelledby": "explain-title" },
    h("h2", { id: "explain-title" }, "Explain"),
    h("form", { class: "inline", onsubmit: submit },
      field("Event type", picker), field("Location id", location), field("Company id", company),
      h("button", { type: "submit" }, "Explain")),
    output,
  );
}

async function deliveriesSection(subscriberId, status = "") {
  const list = await api("GET", "/v1/deliveries", { query: { subscriber_id: subscriberId, status, limit: 50 } });
  const filter = select("status", [["", "any"], ...DELIVERY_STATUSES.map((s) => [s, s])], status);
  const section = h("section", { "aria-labelledby": "deliveries-title", id: "deliveries" });
  filter.addEventListener("change", () => attempt(async () => {
    section.replaceWith(await deliveriesSection(subscriberId, filter.value));
    $("deliveries").querySelector("select").focus();
  }));
  section.append(
    h("h2", { id: "deliveries-title" }, "Deliveries"),
    h("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, field("Status", filter)),
    deliveriesTable(list.items),
  );
  return section;
}

function deliveriesTable(items) {
  return table(
    "Deliveries, newest first",
    ["Delivery", "Event", "Status", "Attempts", "Last code", "Updated"],
    items.map((d) => [
      h("button", { type: "button", class: "link mono", "aria-expanded": "false", onclick: (e) => toggleAttempts(e.currentTarget, d.id) }, d.id),
      d.event,
      badge(d.status),
      String(d.attempt_count),
      d.last_status_code ?? d.last_error ?? "—",
      when(d.updated_at),
    ]),
    "No deliveries.",
  );
}

async function toggleAttempts(button, deliveryId) {
  const row = button.closest("tr");
  const open = row.nextElementSibling?.classList.contains("attempts-row");
  if (open) {
    row.nextElementSibling.remove();
    button.setAttribute("aria-expanded", "false");
    return;
  }
  await attempt(async () => {
    const detail = await api("GET", `/v1/deliveries/${encodeURIComponent(deliveryId)}`);
    const attempts = table(
      `Attempts of ${deliveryId}`,
      ["#", "At", "Status code", "Duration", "Error", "Response excerpt"],
      detail.attempts.map((a) => [
        String(a.attempt),
        when(a.at),
        a.status_code ?? "—",
        `${Math.round(a.duration_ms)} ms`,
        a.error ?? "—",
        h("pre", { class: "excerpt" }, a.response_body.slice(0, 300) || "(empty)"),
      ]),
      detail.reason ? `No attempts (${detail.reason}).` : "No attempts yet.",
    );
    const cell = h("td", { colspan: String(row.children.length) }, attempts);
    row.after(h("tr", { class: "attempts-row" }, cell));
    button.setAttribute("aria-expanded", "true");
  });
}

// ------------------------------------------------------------------ events

const EVENT_FILTERS = ["type", "location_id", "company_id", "status", "since", "until"];

async function eventsPage() {
  const data = await catalog().catch(() => null);
  const controls = {
    type: data
      ? select("type", [["", "any"], ...catalogEvents(data).map((e) => [e, e])])
      : h("input", { name: "type", autocomplete: "off" }),
    location_id: h("input", { name: "location_id", autocomplete: "off" }),
    company_id: h("input", { name: "company_id", autocomplete: "off" }),
    status: select("status", [["", "any"], ...EVENT_STATUSES.map((s) => [s, s])]),
    since: h("input", { name: "since", type: "datetime-local" }),
    until: h("input", { name: "until", type: "datetime-local" }),
  };
  const labels = { type: "Type", location_id: "Location id", company_id: "Company id", status: "Status", since: "Since", until: "Until" };
  const results = h("div", { id: "event-results" });
  const search = (cursor) => attempt(async () => {
    const query = { limit: 50, cursor };
    for (const name of EVENT_FILTERS) {
      const value = controls[name].value.trim();
      // datetime-local is the browser's local time; the API takes RFC 3339.
      query[name] = value && (name === "since" || name === "until") ? new Date(value).toISOString() : value;
    }
    const page = await api("GET", "/v1/events", { query });
    const list = eventsTable(page.items);
    results.replaceChildren(list);
    if (page.next_cursor) {
      results.append(h("button", { type: "button", class: "secondary", onclick: () => search(page.next_cursor) }, "Next page"));
    }
    announce(`${page.items.length} events shown.`);
  });
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); search(); } },
    EVENT_FILTERS.map((name) => field(labels[name], controls[name])),
    h("div", { class: "field" }, h("button", { type: "submit" }, "Search")));
  const section = h("section", { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, "Events"), form, results);
  search();
  return section;
}

function eventsTable(items) {
  return table(
    "Events, newest first",
    ["Event", "Type", "Status", "Location", "Company", "Received"],
    items.map((e) => [
      h("button", { type: "button", class: "link mono", "aria-expanded": "false", onclick: (ev) => toggleEventDeliveries(ev.currentTarget, e.id) }, e.id),
      e.type,
      badge(e.status),
      e.location_id ?? "—",
      e.company_id ?? "—",
      when(e.received_at),
    ]),
    "No events match.",
  );
}

async function toggleEventDeliveries(button, eventId) {
  const row = button.closest("tr");
  if (row.nextElementSibling?.classList.contains("attempts-row")) {
    row.nextElementSibling.remove();
    button.setAttribute("aria-expanded", "false");
    return;
  }
  await attempt(async () => {
    const event = await api("GET", `/v1/events/${encodeURIComponent(eventId)}`);
    const deliveries = table(
      `Deliveries of ${eventId}`,
      ["Subscriber", "Status", "Attempts", "Last code", "Reason"],
      event.deliveries.map((d) => [
        h("a", { href: `#/subscribers/${encodeURIComponent(d.subscriber_id)}` }, d.subscriber_id),
        badge(d.status),
        String(d.attempt_count),
        d.last_status_code ?? d.last_error ?? "—",
        d.reason ?? "—",
      ]),
      "No deliveries: no subscriber was entitled to it.",
    );
    row.after(h("tr", { class: "attempts-row" }, h("td", { colspan: String(row.children.length) }, deliveries)));
    button.setAttribute("aria-expanded", "true");
  });
}

// ------------------------------------------------------------------ catalog

async function catalogPage() {
  const data = await catalog();
  return h(
    "section",
    { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, "Scope catalog"),
    h("p", {}, `Version ${data.version}: ${data.scopes.length} scopes. An event goes only to subscribers holding its scope.`),
    table(
      "Scopes and what they unlock",
      ["Scope", "Access", "Events", "API endpoints"],
      data.scopes.map((s) => [
        h("code", {}, s.name),
        s.access.join(", "),
        s.events.join(", ") || "—",
        s.endpoints.length ? h("details", {}, h("summary", {}, `${s.endpoints.length} endpoint${s.endpoints.length === 1 ? "" : "s"}`),
          h("ul", { class: "plain" }, s.endpoints.map((e) => h("li", {}, h("code", {}, e))))) : "—",
      ]),
    ),
  );
}

// ------------------------------------------------------------------ counters

const SERIES = [
  { name: "accepted", cls: "s-accepted" },
  { name: "delivered", cls: "s-delivered" },
  { name: "failed", cls: "s-failed" },
  { name: "dead", cls: "s-dead" },
];

// Cumulative counts of this router process since it started (its /metrics).
function totals(samples) {
  const sum = (name, keep) => (samples[name] ?? []).filter((s) => keep(s.labels)).reduce((a, s) => a + s.value, 0);
  return {
    accepted: sum("router_events_received_total", (l) => l.status === "accepted"),
    delivered: sum("router_deliveries_total", (l) => l.outcome === "succeeded"),
    failed: sum("router_deliveries_total", (l) => l.outcome === "failed"),
    dead: sum("router_deliveries_total", (l) => l.outcome === "dead"),
  };
}

async function sampleCounters() {
  const at = Date.now();
  state.counters.push({ at, totals: totals(await metrics()) });
  if (state.counters.length > COUNTER_POINTS + 1) state.counters.shift();
}

// Per minute at each sample: the change over the minute before it (or since the first
// sample, when the page has been open for less than that).
function rates() {
  const points = state.counters;
  return points.slice(1).map((p, i) => {
    const base = points.slice(0, i + 1).find((q) => p.at - q.at <= RATE_WINDOW_MS) ?? points[i];
    const minutes = (p.at - base.at) / 60000;
    return Object.fromEntries(SERIES.map((s) => [s.name, Math.max(0, (p.totals[s.name] - base.totals[s.name]) / minutes)]));
  });
}

function renderCounters(box) {
  const series = rates();
  const latest = state.counters.at(-1).totals;
  const now = series.at(-1);
  const legend = h("ul", { class: "legend" }, SERIES.map((s) => h("li", { class: s.cls }, s.name)));
  const summary = now && SERIES.map((s) => `${s.name} ${Math.round(now[s.name])}`).join(", ");
  const chart = now
    ? lineChart(`Per minute, newest on the right: ${summary}`, SERIES.map((s) => ({ ...s, values: series.map((r) => r[s.name]) })))
    : h("p", { class: "empty" }, "Collecting a second sample…");
  box.replaceChildren(
    legend,
    chart,
    table("Counters of this router process", ["Counter", "Total", "Per minute"],
      SERIES.map((s) => [s.name, String(latest[s.name]), now ? String(Math.round(now[s.name])) : "—"])),
  );
}

async function countersPage() {
  const box = h("div", { id: "counters" });
  await sampleCounters();
  renderCounters(box);
  state.poll = window.setInterval(() => attempt(async () => {
    await sampleCounters();
    renderCounters(box);
  }), COUNTER_POLL_MS);
  return h("section", { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, "Live counters"),
    h("p", {}, `Events accepted and deliveries succeeded, failed (to be retried) and dead, per minute over the last minute, sampled every ${COUNTER_POLL_MS / 1000} s from this router process's /metrics while this page is open.`),
    box);
}

function stopPolling() {
  if (state.poll !== null) window.clearInterval(state.poll);
  state.poll = null;
}

// ------------------------------------------------------------------ start

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
if (token.get()) start();
else $("token").focus();
