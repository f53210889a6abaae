"""`webhook-router events …`: list stored events by type, tenant, status and time; show one
with its payload and deliveries."""

from __future__ import annotations

import argparse

from router.commands.client import (
    add_page_options,
    add_time_options,
    connection_options,
    detail,
    page,
    page_query,
    path_segment,
    run_request,
)
from router.commands.deliveries import DELIVERY_COLUMNS

EVENT_COLUMNS = (
    ("ID", "id"),
    ("TYPE", "type"),
    ("STATUS", "status"),
    ("LOCATION", "location_id"),
    ("COMPANY", "company_id"),
    ("RECEIVED", "received_at"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `events` group: list, show."""
    connection = connection_options()
    group = subparsers.add_parser(
        "events",
        help="inspect the events the router received",
        description="Events as the platform sent them, kept for ROUTER_RETENTION. With a "
        "subscriber-bound token, only the events delivered to that subscriber.",
    )
    commands = group.add_subparsers(dest="events_command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        parents=[connection],
        help="list events, newest first",
        description="List stored events newest first, one page at a time (needs "
        "read_events). A filter that matches little may print a short page with a cursor "
        "to go on from.",
    )
    listing.add_argument("--type", metavar="EVENT", help="only this event, e.g. ContactCreate")
    listing.add_argument("--location", metavar="LOCATION_ID", help="only this location's")
    listing.add_argument("--company", metavar="COMPANY_ID", help="only this company's")
    listing.add_argument(
        "--status",
        choices=("accepted", "unroutable"),
        help="accepted (routed) or unroutable (no scope in the catalog)",
    )
    add_time_options(listing, "events")
    add_page_options(listing)
    listing.set_defaults(func=list_events)

    show = commands.add_parser(
        "show",
        parents=[connection],
        help="show an event, its payload and its deliveries",
        description="Show one stored event: its routing fields, its payload as received, and "
        "the deliveries it produced (needs read_events).",
    )
    show.add_argument("id", metavar="ID", help="event id (evt_…)")
    show.set_defaults(func=show_event)


def list_events(args: argparse.Namespace) -> int:
    """Print one page of events; 0, or 1 after printing the API's errors."""
    query = page_query(
        args,
        type=args.type,
        location_id=args.location,
        company_id=args.company,
        status=args.status,
        since=args.since,
        until=args.until,
    )
    return run_request(args, "GET", "/v1/events" + query, page(EVENT_COLUMNS))


def show_event(args: argparse.Namespace) -> int:
    """Print an event, then its deliveries as a table; 0, or 1 on an API error."""
    return run_request(
        args,
        "GET",
        f"/v1/events/{path_segment(args.id)}",
        lambda data: detail(data, "deliveries", DELIVERY_COLUMNS),
    )
