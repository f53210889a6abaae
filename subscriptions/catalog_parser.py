"""Turn a scope table in the platform's markdown format into catalog data.

The platform publishes its OAuth scopes as a markdown table (scope, API endpoints, webhook
events, access type), and the copies we get are damaged: cells shift into the wrong column,
continuation rows carry a lone endpoint, event or access type, trailing cells go missing and
paths pick up stray spaces. So a cell is classified by what it *is*, never by its column:

- a scope name: `contacts.readonly`, `locations/customValues.write` (level `.readonly`,
  `.write` or `.read`);
- an endpoint: `METHOD /path` (whitespace around a `/` is dropped, the method upper-cased);
- an access type: `Sub-cuenta`, `Sub-Account`, `Company`, or a list of them
  (`Sub-Account, Company`), normalised to `Sub-Account` and `Company`;
- a webhook event: a CamelCase word with at least two capitals (`ContactCreate`).

Everything a row holds belongs to the scope that row names; a row naming no scope continues
the last scope named above it. Anything else — prose, headers, separators, cells of no known
kind, items above the first scope — is ignored.
"""

from __future__ import annotations

import re
from typing import Any


class CatalogError(Exception):
    """The catalog or its overlay cannot be used; the message is one human line."""


SUB_ACCOUNT = "Sub-Account"
COMPANY = "Company"
_ACCESS_ORDER = (SUB_ACCOUNT, COMPANY)

# The platform's own spellings, in both languages of its docs, compared case-insensitively.
_ACCESS_WORDS = {
    "sub-cuenta": SUB_ACCOUNT,
    "subcuenta": SUB_ACCOUNT,
    "sub cuenta": SUB_ACCOUNT,
    "sub-account": SUB_ACCOUNT,
    "subaccount": SUB_ACCOUNT,
    "sub account": SUB_ACCOUNT,
    "company": COMPANY,
}

# The level suffix is spelled out so that prose like `docs.example.com` is not taken for a scope.
_SCOPE = re.compile(r"[a-z][A-Za-z0-9_-]*(?:/[A-Za-z][A-Za-z0-9_-]*)*\.(?:readonly|write|read)")
_ENDPOINT = re.compile(r"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(/.*)", re.IGNORECASE)
_PATH = re.compile(r"/[A-Za-z0-9_\-.~:{}/%@+=,;$!*'()]*")
_EVENT = re.compile(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*")
_SEPARATOR_CELL = re.compile(r":?-+:?")
_ACCESS_SPLIT = re.compile(r"\s*(?:,|/|;|&|\band\b|\by\b)\s*", re.IGNORECASE)
_ITEM_SPLIT = re.compile(r"<br\s*/?>|[,;]", re.IGNORECASE)
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
# Markdown emphasis and code marks that wrap a cell's value without being part of it.
_DECORATION = "`*_ \t"


def parse_markdown(text: str, version: str = "v1") -> dict[str, Any]:
    """Return catalog data (`{"version", "scopes", "aliases"}`) for the scope table in `text`.

    Guarantees: scopes appear in table order, each once (a scope named twice is merged);
    each scope's endpoints, events and access types appear once, in table order, except that
    access is ordered Sub-Account before Company; `aliases` is always empty — aliases are
    not part of the platform's table. Never raises anything but `CatalogError`, which it
    raises when `text` holds no table row naming a scope (so no catalog can be made of it).
    """
    scopes: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    for cells in _data_rows(text):
        items = [item for cell in cells for item in _classify(cell)]
        # Items left of a row's first scope name are that scope's cells, shifted.
        current = next((value for kind, value in items if kind == "scope"), current)
        for kind, value in items:
            if kind == "scope":
                current = value
            if current is None:
                continue
            entry = scopes.setdefault(current, {"access": [], "endpoints": [], "events": []})
            if kind != "scope" and value not in entry[kind]:
                entry[kind].append(value)
    if not scopes:
        raise CatalogError("no scope table found: no table row names a scope like 'x.readonly'")
    return {
        "version": version,
        "scopes": [
            {
                "name": name,
                "access": [a for a in _ACCESS_ORDER if a in entry["access"]],
                "endpoints": entry["endpoints"],
                "events": entry["events"],
            }
            for name, entry in scopes.items()
        ],
        "aliases": {},
    }


def _data_rows(text: str) -> list[list[str]]:
    """The cells of every table row that may hold data: not separators, not headers."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in _CELL_SPLIT.split(line.strip("|"))]
        if _is_separator(cells):
            # The row above a separator is the header, unless damage made it a data row.
            if rows and not any(kind in ("scope", "endpoints") for kind in _kinds(rows[-1])):
                rows.pop()
            continue
        rows.append(cells)
    return rows


def _is_separator(cells: list[str]) -> bool:
    filled = [cell.replace(" ", "") for cell in cells if cell]
    return bool(filled) and all(_SEPARATOR_CELL.fullmatch(cell) for cell in filled)


def _kinds(cells: list[str]) -> set[str]:
    return {kind for cell in cells for kind, _ in _classify(cell)}


def _classify(cell: str) -> list[tuple[str, str]]:
    """(kind, value) for each item in one cell; kind is scope, endpoints, events or access."""
    value = cell.replace("\\|", "|").strip(_DECORATION)
    items = _items(value)
    if items or not value:
        return items
    # A cell may list several items (`ContactCreate<br>ContactDelete`); keep those we know.
    return [item for part in _ITEM_SPLIT.split(value) for item in _items(part.strip(_DECORATION))]


def _items(value: str) -> list[tuple[str, str]]:
    access = _access(value)
    if access:
        return [("access", a) for a in access]
    if _SCOPE.fullmatch(value):
        return [("scope", value)]
    endpoint = _ENDPOINT.fullmatch(value)
    if endpoint:
        path = re.sub(r"\s*/\s*", "/", endpoint.group(2).strip())
        return (
            [("endpoints", f"{endpoint.group(1).upper()} {path}")] if _PATH.fullmatch(path) else []
        )
    if _EVENT.fullmatch(value) and sum(c.isupper() for c in value) >= 2:
        return [("events", value)]
    return []


def _access(value: str) -> list[str]:
    """The normalised access types `value` lists, or [] unless every part of it is one."""
    words = [w for w in _ACCESS_SPLIT.split(value.lower()) if w]
    kinds = [_ACCESS_WORDS.get(w) for w in words]
    if not kinds or None in kinds:
        return []
    return [k for k in kinds if k is not None]
