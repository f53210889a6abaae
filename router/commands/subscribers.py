"""`webhook-router subscribers …`: register subscribers and change their grants over the API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlencode

from router.commands.client import (
    add_page_options,
    cell,
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
    """Add the `subscribers` group: list, add, update, show, backfill, grant, revoke, pause,
    resume, delete, explain, replay, rotate-secret."""
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
    add_flow_options(add)
    add.set_defaults(func=add_subscriber)

    update = commands.add_parser(
        "update",
        parents=[connection],
        help="change a subscriber's delivery terms",
        description="Change a subscriber's rate limit, retry schedule, ordering or payload "
        "filter (needs "
        "write_subscribers); what is not given stays as it is.",
    )
    update.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    add_flow_options(update, clearable=True)
    update.set_defaults(func=update_subscriber)

    show = commands.add_parser(
        "show",
        parents=[connection],
        help="show one subscriber",
        description="Show a subscriber's fields (needs read_subscribers).",
    )
    show.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    show.set_defaults(func=show_subscriber)

    backfill = commands.add_parser(
        "backfill",
        parents=[connection],
        help="deliver retained events a subscriber is newly entitled to",
        description="Create deliveries for the retained events received in [--since, --until) "
        "that the subscriber is entitled to now and has none for (needs write_deliveries). "
        "Running it again schedules only what is still missing.",
    )
    backfill.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    backfill.add_argument(
        "--since", required=True, metavar="TIME", help="RFC 3339, e.g. 2026-12-01T00:00:00Z"
    )
    backfill.add_argument("--until", required=True, metavar="TIME", help="RFC 3339, exclusive")
    backfill.add_argument(
        "--event",
        dest="events",
        action="append",
        metavar="EVENT",
        help="only this event, e.g. ContactCreate (repeatable; default: every entitled one)",
    )
    backfill.set_defaults(func=backfill_subscriber)

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

    for name, status, func, text in (
        ("pause", "paused", pause_subscriber, "stop delivering; pending deliveries are skipped"),
        ("resume", "active", resume_subscriber, "deliver again, events routed from now on"),
    ):
        toggle = commands.add_parser(
            name,
            parents=[connection],
            help=f"{name} a subscriber: {text}",
            description=f"Set a subscriber's status to {status} (needs write_subscribers): {text}.",
        )
        toggle.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
        toggle.set_defaults(func=func)

    delete = commands.add_parser(
        "delete",
        parents=[connection],
        help="delete a subscriber",
        description="Delete a subscriber (needs write_subscribers); its pending deliveries "
        "are skipped. Its past deliveries stay listed until the retention expires them.",
    )
    delete.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    delete.set_defaults(func=delete_subscriber)

    explain = commands.add_parser(
        "explain",
        parents=[connection],
        help="would it receive an event, and why not",
        description="Say whether a subscriber would receive an event of this type (for this "
        "location or company) and every reason it would not (needs read_subscribers).",
    )
    explain.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    explain.add_argument(
        "--event", required=True, help="event name or payload type, e.g. ContactCreate"
    )
    explain.add_argument("--location", metavar="LOCATION_ID", help="the event's location")
    explain.add_argument("--company", metavar="COMPANY_ID", help="the event's company")
    explain.set_defaults(func=explain_subscriber)

    replay = commands.add_parser(
        "replay",
        parents=[connection],
        help="requeue a subscriber's dead deliveries",
        description="Requeue every delivery of a subscriber in one state, dead by default, "
        "each with a fresh round of its retry schedule (needs write_deliveries).",
    )
    replay.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    replay.add_argument(
        "--status",
        choices=("dead", "failed", "succeeded", "skipped"),
        default="dead",
        help="replay the deliveries in this state (default dead)",
    )
    replay.add_argument(
        "--since",
        metavar="TIME",
        help="only deliveries of events received at or after this RFC 3339 time",
    )
    replay.set_defaults(func=replay_subscriber)

    rotate = commands.add_parser(
        "rotate-secret",
        parents=[connection],
        help="rotate the signing secret and print the new one",
        description="Give a subscriber a new signing secret and print it once (needs "
        "write_subscribers). Deliveries are signed with the old one too until "
        "ROUTER_SECRET_GRACE has passed, so the receiver can switch without losing any.",
    )
    rotate.add_argument("id", metavar="ID", help="subscriber id (sub_…)")
    rotate.set_defaults(func=rotate_secret)


def list_subscribers(args: argparse.Namespace) -> int:
    """Print one page of subscribers; 0, or 1 after printing the API's errors."""
    return run_request(args, "GET", "/v1/subscribers" + page_query(args), page(SUBSCRIBER_COLUMNS))


def _schedule(value: str) -> list[float]:
    try:
        delays = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("must be comma-separated seconds, e.g. 5,30,120") from None
    if not delays:
        raise argparse.ArgumentTypeError("must be comma-separated seconds, e.g. 5,30,120")
    return delays


def _filter(value: str) -> dict[str, Any]:
    try:
        document = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. {"pipelineId": "p1"}')
    return document


def add_flow_options(parser: argparse.ArgumentParser, *, clearable: bool = False) -> None:
    """The delivery-term flags of `add` and `update` (`update` can also remove them)."""
    parser.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="at most this many requests a second, across every router process",
    )
    parser.add_argument(
        "--burst", type=int, help="requests allowed at once after a pause (default 1)"
    )
    parser.add_argument(
        "--retry-schedule",
        type=_schedule,
        metavar="SECONDS",
        help="seconds between attempts, comma-separated (default: the router's)",
    )
    parser.add_argument(
        "--ordering",
        choices=("none", "resource"),
        help="resource: deliveries about one resource (contact, opportunity...) one at a "
        "time, in the order their events arrived",
    )
    parser.add_argument(
        "--filter",
        type=_filter,
        metavar="JSON",
        help='only events whose payload matches, e.g. \'{"pipelineId": "p1", "contact.tags": '
        '{"$contains": "vip"}}\' (see README, "Payload filters")',
    )
    if clearable:
        parser.add_argument("--no-filter", action="store_true", help="remove the payload filter")
        parser.add_argument("--no-rate-limit", action="store_true", help="remove the rate limit")
        parser.add_argument(
            "--default-retry-schedule",
            action="store_true",
            help="use the router's retry schedule again",
        )


def flow_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The delivery terms the flags set, as the API takes them."""
    body: dict[str, Any] = {}
    if args.rate_limit is not None:
        body["rate_limit"] = {"per_second": args.rate_limit}
        if args.burst is not None:
            body["rate_limit"]["burst"] = args.burst
    elif getattr(args, "no_rate_limit", False):
        body["rate_limit"] = None
    if args.retry_schedule is not None:
        body["retry_schedule"] = args.retry_schedule
    elif getattr(args, "default_retry_schedule", False):
        body["retry_schedule"] = None
    if args.ordering is not None:
        body["ordering"] = args.ordering
    if args.filter is not None:
        body["filter"] = args.filter
    elif getattr(args, "no_filter", False):
        body["filter"] = None
    return body


def update_subscriber(args: argparse.Namespace) -> int:
    """Change a subscriber's delivery terms and print it; 0, or 1 on an API error."""
    body = flow_fields(args)
    if not body:
        print(
            "error: nothing to change: give --rate-limit, --retry-schedule, --ordering or --filter",
            file=sys.stderr,
        )
        return 2
    path = f"/v1/subscribers/{path_segment(args.id)}"
    return run_request(args, "PATCH", path, record, body)


def add_subscriber(args: argparse.Namespace) -> int:
    """Register a subscriber and print it with its secret; 0, or 1 on an API error."""
    body: dict[str, Any] = {"name": args.name, "url": args.target_url, "scopes": args.scopes}
    if args.events:
        body["events"] = args.events
    if args.location_ids:
        body["location_ids"] = args.location_ids
    if args.company_id:
        body["company_id"] = args.company_id
    body.update(flow_fields(args))
    return run_request(args, "POST", "/v1/subscribers", record, body)


def show_subscriber(args: argparse.Namespace) -> int:
    """Print one subscriber; 0, or 1 on an API error (404 included)."""
    return run_request(args, "GET", f"/v1/subscribers/{path_segment(args.id)}", record)


def backfill_subscriber(args: argparse.Namespace) -> int:
    """Backfill a subscriber and print how many deliveries were scheduled; 0, or 1 on an API
    error."""
    body: dict[str, Any] = {"since": args.since, "until": args.until}
    if args.events:
        body["events"] = args.events
    return run_request(args, "POST", _subscriber_path(args, "/backfill"), record, body)


def grant_scopes(args: argparse.Namespace) -> int:
    """Add scopes to a subscriber's grants and print the result; 0, or 1 on an API error."""
    path = f"/v1/subscribers/{path_segment(args.id)}/grants"
    return run_request(args, "POST", path, record, {"add": args.scopes})


def revoke_scopes(args: argparse.Namespace) -> int:
    """Remove scopes from a subscriber's grants and print the result; 0, or 1 on an API error."""
    path = f"/v1/subscribers/{path_segment(args.id)}/grants"
    return run_request(args, "POST", path, record, {"remove": args.scopes})


def _subscriber_path(args: argparse.Namespace, tail: str = "") -> str:
    return f"/v1/subscribers/{path_segment(args.id)}{tail}"


def pause_subscriber(args: argparse.Namespace) -> int:
    """Pause a subscriber and print it; 0, or 1 on an API error."""
    return run_request(args, "PATCH", _subscriber_path(args), record, {"status": "paused"})


def resume_subscriber(args: argparse.Namespace) -> int:
    """Make a paused subscriber active again and print it; 0, or 1 on an API error."""
    return run_request(args, "PATCH", _subscriber_path(args), record, {"status": "active"})


def delete_subscriber(args: argparse.Namespace) -> int:
    """Delete a subscriber; 0 (printing what was deleted), or 1 on an API error."""
    return run_request(args, "DELETE", _subscriber_path(args), lambda _: f"deleted {cell(args.id)}")


def explain_subscriber(args: argparse.Namespace) -> int:
    """Print the verdict for one event; 0, or 1 on an API error."""
    query = urlencode(
        {
            name: value
            for name, value in (
                ("event", args.event),
                ("location_id", args.location),
                ("company_id", args.company),
            )
            if value
        }
    )
    return run_request(args, "GET", _subscriber_path(args, f"/explain?{query}"), record)


def replay_subscriber(args: argparse.Namespace) -> int:
    """Requeue a subscriber's deliveries in one state; 0, or 1 on an API error."""
    body: dict[str, Any] = {"status": args.status}
    if args.since:
        body["since"] = args.since
    return run_request(args, "POST", _subscriber_path(args, "/replay"), record, body)


def rotate_secret(args: argparse.Namespace) -> int:
    """Rotate the signing secret and print the new one; 0, or 1 on an API error."""
    return run_request(args, "POST", _subscriber_path(args, "/secret/rotate"), _new_secret)


def _new_secret(data: dict[str, Any]) -> str:
    print("Store this secret now: it is not shown again.", file=sys.stderr)
    return record(data)
