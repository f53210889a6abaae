"""`webhook-router subscribers …`: register subscribers and change their grants over the API."""

from __future__ import annotations

import argparse
from typing import Any

from router.commands.client import (
    add_page_options,
    connection_options,
    page,
    page_query,
    path_segment,
    record,
    run_request,
)

SUBSCRIBER_COLUMNS = (
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("SCOPES", "scopes"),
    ("URL", "url"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `subscribers` group: list, add, show, grant, revoke."""
    connection = connection_options()
    group = subparsers.add_parser(
        "subscribers",
        help="register subscribers and manage their scope grants",
        description="Subscribers are the apps events are delivered to; each receives only the "
        "events its granted scopes entitle it to. Calls the operator API at --url with the "
        "token in $ROUTER_TOKEN.",
    )
    commands = group.add_subparsers(dest="subscribers_command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        parents=[connection],
        help="list subscribers",
        description="List subscribers, one page at a time (needs read_subscribers).",
    )
    add_page_options(listing)
    listing.set_defaults(func=list_subscribers)

    add = commands.add_parser(
        "add",
        parents=[connection_options(url_flag=False)],
        help="register a subscriber and print its signing secret",
        description="Register a subscriber (needs write_subscribers). The response holds its "
        "signing secret; store it now, it is not shown again.",
    )
    add.add_argument("--name", required=True, help="a name for people to recognise it by")
    add.add_argument(
        "--url",
        dest="target_url",
        required=True,
        metavar="URL",
        help="where events are POSTed (the service's own URL is --api-url here)",
    )
    add.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="a platform scope to grant, e.g. contacts.readonly (repeatable)",
    )
    add.add_argument(
        "--event",
        dest="events",
        action="append",
        metavar="EVENT",
        help="only these events, e.g. ContactCreate (repeatable; default: every entitled one)",
    )
    add.add_argument(
        "--location",
        dest="location_ids",
        action="append",
        metavar="LOCATION_ID",
        help="only events of this location (repeatable; default: any location)",
    )
    add.add_argument("--company", dest="company_id", help="only events of this company")
    add.set_defaults(func=add_subscriber)

    show = commands.add_parser(
        "show",
        parents=[connection],
        help="show one subscriber",
        description="Show a subscriber's fields (needs read_subscribers).",
    )
    show.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    show.set_defaults(func=show_subscriber)

    for name, verb, func in (
        ("grant", "grant", grant_scopes),
        ("revoke", "revoke", revoke_scopes),
    ):
        change = commands.add_parser(
            name,
            parents=[connection],
            help=f"{verb} scopes to a subscriber" if verb == "grant" else "revoke its scopes",
            description=f"{verb.capitalize()} platform scopes (needs write_subscribers). "
            "Takes effect for events routed from now on.",
        )
        change.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
        change.add_argument("scopes", metavar="SCOPE", nargs="+", help="platform scopes")
        change.set_defaults(func=func)


def list_subscribers(args: argparse.Namespace) -> int:
    """Print one page of subscribers; 0, or 1 after printing the API's errors."""
    return run_request(args, "GET", "/v1/subscribers" + page_query(args), page(SUBSCRIBER_COLUMNS))


def add_subscriber(args: argparse.Namespace) -> int:
    """Register a subscriber and print it with its secret; 0, or 1 on an API error."""
    body: dict[str, Any] = {"name": args.name, "url": args.target_url, "scopes": args.scopes}
    if args.events:
        body["events"] = args.events
    if args.location_ids:
        body["location_ids"] = args.location_ids
    if args.company_id:
        body["company_id"] = args.company_id
    return run_request(args, "POST", "/v1/subscribers", record, body)


def show_subscriber(args: argparse.Namespace) -> int:
    """Print one subscriber; 0, or 1 on an API error (404 included)."""
    return run_request(args, "GET", f"/v1/subscribers/{path_segment(args.id)}", record)


def grant_scopes(args: argparse.Namespace) -> int:
    """Add scopes to a subscriber's grants and print the result; 0, or 1 on an API error."""
    path = f"/v1/subscribers/{path_segment(args.id)}/grants"
    return run_request(args, "POST", path, record, {"add": args.scopes})


def revoke_scopes(args: argparse.Namespace) -> int:
    """Remove scopes from a subscriber's grants and print the result; 0, or 1 on an API error."""
    path = f"/v1/subscribers/{path_segment(args.id)}/grants"
    return run_request(args, "POST", path, record, {"remove": args.scopes})
