"""`webhook-router catalog …`: import a platform scope table, show the catalog in force."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router.core.text import escape, json_text
from subscriptions.catalog import Catalog, CatalogData, CatalogError, load_catalog
from subscriptions.catalog_parser import parse_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `catalog` group with its `import` and `show` subcommands."""
    group = subparsers.add_parser(
        "catalog",
        help="import or show the scope catalog",
        description="The scope catalog maps each webhook event and API endpoint to the OAuth "
        "scope it requires.",
    )
    commands = group.add_subparsers(dest="catalog_command", metavar="COMMAND", required=True)

    importer = commands.add_parser(
        "import",
        help="print the catalog data file for a markdown scope table",
        description="Parse a scope table in the platform's markdown format (damaged cells "
        "tolerated) and print the catalog data file as JSON, ready for ROUTER_CATALOG.",
    )
    importer.add_argument("file", metavar="FILE.md", type=Path, help="the markdown scope table")
    importer.add_argument(
        "--version", default="v1", help="version recorded in the data file (default: v1)"
    )
    importer.set_defaults(func=import_table)

    show = commands.add_parser(
        "show",
        help="print the catalog in force",
        description="Print the catalog the service would use: ROUTER_CATALOG (default: the "
        "shipped v1 catalog) plus ROUTER_CATALOG_OVERLAY.",
    )
    show.add_argument("--json", action="store_true", help="print the catalog data as JSON")
    show.set_defaults(func=show_catalog)


def import_table(args: argparse.Namespace) -> int:
    """Print the data file for `args.file`; 0 on success, 2 with one stderr line on error."""
    path: Path = args.file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"error: cannot read {path}: {reason}", file=sys.stderr)
        return 2
    try:
        data = parse_markdown(text, version=args.version)
        # Building the catalog proves the printed file will load as ROUTER_CATALOG.
        catalog = Catalog(CatalogData.model_validate(data))
    except CatalogError as exc:
        print(f"error: {path}: {escape(str(exc))}", file=sys.stderr)
        return 2
    print(json_text(catalog.to_data()))
    return 0


def show_catalog(args: argparse.Namespace) -> int:
    """Print the catalog in force (a table, or JSON with --json); 2 if it cannot be loaded."""
    from router.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        catalog = load_catalog(settings.catalog_path, settings.catalog_overlay)
    except (SettingsError, CatalogError) as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2
    if args.json:
        print(json_text(catalog.to_data()))
    else:
        print(render(catalog))
    return 0


def render(catalog: Catalog) -> str:
    """The catalog as aligned text (control characters escaped): one line per scope, then
    aliases, then the counts."""
    rows = [("SCOPE", "ACCESS", "ENDPOINTS", "EVENTS")]
    for entry in catalog.scopes.values():
        access = ", ".join(entry.access) or "-"
        rows.append(
            (escape(entry.name), access, str(len(entry.endpoints)), escape(", ".join(entry.events)))
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"Scope catalog {escape(catalog.version)}", ""]
    for name, access, endpoints, events in rows:
        line = f"{name:<{widths[0]}}  {access:<{widths[1]}}  {endpoints:>{widths[2]}}  {events}"
        lines.append(line.rstrip())
    lines += ["", "Aliases (payload type -> event):"]
    lines += [
        f"  {escape(alias)} -> {escape(event)}" for alias, event in catalog.aliases.items()
    ] or ["  none"]
    lines += ["", str(catalog.counts())]
    return "\n".join(lines)
