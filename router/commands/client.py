"""The CLI's client of the operator API, shared by every HTTP-backed command group: connection
options, one request per command, error envelopes turned into `error: <message>` lines, and
tables and records printed with control characters escaped (`router.core.text`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from router.core.text import escape, json_text

DEFAULT_URL = "http://127.0.0.1:8080"
REQUEST_TIMEOUT = 30.0

Renderer = Callable[[Any], str]


class ApiFailure(Exception):
    """A request that did not succeed; `lines` are what the command prints on stderr."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def connection_options(*, url_flag: bool = True) -> argparse.ArgumentParser:
    """A parent parser with --api-url (and its short form --url), --token and --json.

    `url_flag=False` leaves out `--url` for a subcommand that uses it for something else
    (`subscribers add --url` is the subscriber's endpoint); `--api-url` always works.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        *(("--url", "--api-url") if url_flag else ("--api-url",)),
        dest="api_url",
        metavar="URL",
        help=f"base URL of the service (default: $ROUTER_URL, else {DEFAULT_URL})",
    )
    parent.add_argument(
        "--token",
        help="operator bearer token (default: $ROUTER_TOKEN; prefer the variable, a flag "
        "is visible to other local users)",
    )
    parent.add_argument("--json", action="store_true", help="print the raw JSON response")
    return parent


def path_segment(value: str) -> str:
    """`value` quoted as one URL path segment, so an id cannot reach another route."""
    return quote(value, safe="")


def error_lines(status: int, body: bytes) -> list[str]:
    """The `error: …` lines for a failed response: one per envelope item, escaped."""
    try:
        items = json.loads(body)["errors"]
        lines = []
        for item in items:
            line = f"error: {escape(str(item['message']))}"
            required = item.get("extensions", {}).get("requiredScope")
            if required:
                line += f" (required scope: {escape(str(required))})"
            lines.append(line)
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"error: HTTP {status}"]
    return lines or [f"error: HTTP {status}"]


async def request_api(
    base_url: str, token: str | None, method: str, path: str, body: Any = None
) -> Any:
    """The decoded JSON of a successful response (None for an empty one).

    Raises ApiFailure with the envelope's messages on an error status, or with one line when
    the service cannot be reached.
    """
    url = base_url.rstrip("/") + path
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ApiFailure([f"error: cannot reach {base_url}: {reason}"]) from None
    if status >= 400:
        raise ApiFailure(error_lines(status, raw))
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiFailure([f"error: {base_url} answered {status} without JSON"]) from None


def run_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    render: Renderer,
    body: Any = None,
) -> int:
    """Make one API call and print its result (`render`ed, or raw with --json).

    Returns 0 on success, 1 after printing the error lines on stderr.
    """
    base_url = args.api_url or os.environ.get("ROUTER_URL") or DEFAULT_URL
    token = args.token or os.environ.get("ROUTER_TOKEN")
    try:
        data = asyncio.run(request_api(base_url, token, method, path, body))
    except ApiFailure as failure:
        for line in failure.lines:
            print(line, file=sys.stderr)
        return 1
    if args.json:
        print(json_text(data))
    else:
        print(render(data))
    return 0


def cell(value: Any) -> str:
    """A JSON value as table text, control characters escaped: lists comma-joined, null as
    `-`."""
    if value is None:
        return "-"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return escape(", ".join(str(v) for v in value)) or "-"
        return escape(json.dumps(value, ensure_ascii=False))
    if isinstance(value, dict):
        return escape(json.dumps(value, ensure_ascii=False))
    return escape(str(value))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned columns under a header; `columns` are (header, field) pairs."""
    lines = [[header for header, _ in columns]]
    lines += [[cell(row.get(field)) for _, field in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def record(data: dict[str, Any]) -> str:
    """One resource as aligned `field  value` lines, in the response's field order."""
    fields = {escape(str(field)): value for field, value in data.items()}
    width = max((len(field) for field in fields), default=0)
    return "\n".join(
        f"{field.ljust(width)}  {cell(value)}".rstrip() for field, value in fields.items()
    )


def page(columns: Sequence[tuple[str, str]]) -> Renderer:
    """Renders a `{"items", "next_cursor"}` page as a table, then how to fetch the next one."""

    def render(data: dict[str, Any]) -> str:
        text = table(data["items"], columns)
        if data.get("next_cursor"):
            text += f"\n\nmore: repeat with --cursor {escape(str(data['next_cursor']))}"
        return text

    return render


def add_page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="items per page, 1..100 (default 50)")
    parser.add_argument("--cursor", help="the cursor printed after the previous page")


def page_query(args: argparse.Namespace, **filters: str | None) -> str:
    """`?limit=…` with the cursor and every filter that was given, each URL-encoded (an RFC
    3339 offset's `+` included, which a query string would otherwise read as a space)."""
    values = {"limit": str(args.limit), "cursor": args.cursor, **filters}
    return "?" + urlencode({name: value for name, value in values.items() if value})


def add_time_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--since and --until, as the API takes them."""
    parser.add_argument(
        "--since",
        metavar="TIME",
        help=f"only {what} received at or after this RFC 3339 time, e.g. 2026-01-31T09:00:00Z",
    )
    parser.add_argument(
        "--until", metavar="TIME", help=f"only {what} received before this RFC 3339 time"
    )


def detail(data: dict[str, Any], rows: str, columns: Sequence[tuple[str, str]]) -> str:
    """A resource's fields, then its list field `rows` as a table under a heading."""
    fields = {name: value for name, value in data.items() if name != rows}
    items = data.get(rows) or []
    body = table(items, columns) if items else "(none)"
    return f"{record(fields)}\n\n{rows.upper()}\n{body}"
