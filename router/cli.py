"""The `webhook-router` command (also `python -m router`)."""

from __future__ import annotations

import argparse
import sys

from router.commands import api_keys, catalog, deliveries, events, serve, subscribers
from router.settings import SettingsError, settings_table
from subscriptions.catalog import CatalogError


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(
        f"  {name:<30} {meaning} (default: {default})"
        for name, default, meaning in settings_table()
    )
    parser = argparse.ArgumentParser(
        prog="webhook-router",
        description="A scope-aware webhook router: accepts the platform's webhook events and "
        "delivers each one, signed and retried, to exactly the subscribers entitled to it.",
        epilog="Settings (environment variables):\n" + settings_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.register(commands)
    catalog.register(commands)
    subscribers.register(commands)
    api_keys.register(commands)
    deliveries.register(commands)
    events.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a bad setting or catalog stops it with one line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, CatalogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
