"""`webhook-router deliveries …`: list deliveries, show one with its attempts, retry one."""

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
    record,
    run_request,
)

DELIVERY_COLUMNS = (
    ("ID", "id"),
    ("SUBSCRIBER", "subscriber_id"),
    ("EVENT", "event"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempt_count"),
    ("LAST CODE", "last_status_code"),
    ("UPDATED", "updated_at"),
)
ATTEMPT_COLUMNS = (
    ("#", "attempt"),
    ("AT", "at"),
    ("CODE", "status_code"),
    ("ERROR", "error"),
    ("MS", "duration_ms"),
    ("RESPONSE", "response_body"),
)
STATUSES = ("pending", "succeeded", "failed", "dead", "skipped")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `deliveries` group: list, show, retry."""
    connection = connection_options()
    group = subparsers.add_parser(
        "deliveries",
        help="inspect deliveries and retry them",
        description="A delivery is one event on its way to one subscriber: its state, and a "
        "log of every attempt. With a subscriber-bound token, only that subscriber's.",
    )
    commands = group.add_subparsers(dest="deliveries_command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        parents=[connection],
        help="list deliveries, newest first",
        description="List deliveries newest first, one page at a time (needs "
        "read_deliveries). A filter that matches little may print a short page with a "
        "cursor to go on from.",
    )
    listing.add_argument("--subscriber", metavar="ID", help="only this subscriber's (sub_…)")
    listing.add_argument("--status", choices=STATUSES, help="only deliveries in this state")
    listing.add_argument("--event", metavar="EVENT", help="only this event, e.g. ContactCreate")
    add_time_options(listing, "deliveries of events")
    add_page_options(listing)
    listing.set_defaults(func=list_deliveries)

    show = commands.add_parser(
        "show",
        parents=[connection],
        help="show a delivery and its attempts",
        description="Show one delivery and every attempt: status code, duration and the "
        "start of the receiver's answer (needs read_deliveries).",
    )
    show.add_argument("id", metavar="ID", help="delivery id (dlv_…)")
    show.set_defaults(func=show_delivery)

    retry = commands.add_parser(
        "retry",
        parents=[connection],
        help="attempt a delivery again now",
        description="Give a delivery a fresh round of its retry schedule, starting now, "
        "whatever its state but pending (needs write_deliveries).",
    )
    retry.add_argument("id", metavar="ID", help="delivery id (dlv_…)")
    retry.set_defaults(func=retry_delivery)


def list_deliveries(args: argparse.Namespace) -> int:
    """Print one page of deliveries; 0, or 1 after printing the API's errors."""
    query = page_query(
        args,
        subscriber_id=args.subscriber,
        status=args.status,
        event=args.event,
        since=args.since,
        until=args.until,
    )
    return run_request(args, "GET", "/v1/deliveries" + query, page(DELIVERY_COLUMNS))


def show_delivery(args: argparse.Namespace) -> int:
    """Print a delivery, then its attempts as a table; 0, or 1 on an API error."""
    return run_request(
        args,
        "GET",
        f"/v1/deliveries/{path_segment(args.id)}",
        lambda data: detail(data, "attempts", ATTEMPT_COLUMNS),
    )


def retry_delivery(args: argparse.Namespace) -> int:
    """Requeue a delivery and print how many were requeued; 0, or 1 on an API error."""
    return run_request(args, "POST", f"/v1/deliveries/{path_segment(args.id)}/retry", record)
