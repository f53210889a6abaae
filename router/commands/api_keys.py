"""`webhook-router api-keys …`: create, list and regenerate operator API keys over the API."""

from __future__ import annotations

import argparse
import sys
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
from router.http.auth import OPERATOR_SCOPES

API_KEY_COLUMNS = (
    ("ID", "id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("TOKEN SCOPES", "token_scopes"),
    ("CREATED", "created_at"),
    ("SUBSCRIBER", "subscriber_id"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `api-keys` group: create, list, regenerate."""
    connection = connection_options()
    group = subparsers.add_parser(
        "api-keys",
        help="manage operator API keys",
        description="Operator API keys hold operator scopes. A token carries the scopes it "
        "was issued with: after changing a key's scopes, regenerate its token. Every "
        "command needs a token holding write_api_keys.",
    )
    commands = group.add_subparsers(dest="api_keys_command", metavar="COMMAND", required=True)

    create = commands.add_parser(
        "create",
        parents=[connection],
        help="create a key and print its token (shown once)",
        description="Create an API key. Grant only the scopes the caller needs; the token is "
        "printed once and stored by the service only as a hash.",
    )
    create.add_argument("--name", required=True, help="a name for people to recognise it by")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=OPERATOR_SCOPES,
        metavar="SCOPE",
        help=f"an operator scope (repeatable): {', '.join(OPERATOR_SCOPES)}",
    )
    create.add_argument(
        "--subscriber",
        metavar="ID",
        help="bind the key to this subscriber (sub_…): it then sees and acts on that "
        "subscriber alone, as its developers' portal does",
    )
    create.set_defaults(func=create_api_key)

    listing = commands.add_parser(
        "list",
        parents=[connection],
        help="list keys (never their tokens)",
        description="List API keys with their scopes and their live token's scopes.",
    )
    add_page_options(listing)
    listing.set_defaults(func=list_api_keys)

    regenerate = commands.add_parser(
        "regenerate",
        parents=[connection],
        help="issue a new token with the key's current scopes",
        description="Issue a new token carrying the key's current scopes and print it once; "
        "the previous token stops working immediately.",
    )
    regenerate.add_argument("id", metavar="ID", help="API key id (key_…)")
    regenerate.set_defaults(func=regenerate_api_key)


def _with_token_warning(data: dict[str, Any]) -> str:
    print("Store this token now: it is not shown again.", file=sys.stderr)
    return record(data)


def create_api_key(args: argparse.Namespace) -> int:
    """Create a key and print it with its token; 0, or 1 after printing the API's errors."""
    body: dict[str, Any] = {"name": args.name, "scopes": args.scopes}
    if args.subscriber:
        body["subscriber_id"] = args.subscriber
    return run_request(args, "POST", "/v1/api-keys", _with_token_warning, body)


def list_api_keys(args: argparse.Namespace) -> int:
    """Print one page of keys; 0, or 1 on an API error."""
    return run_request(args, "GET", "/v1/api-keys" + page_query(args), page(API_KEY_COLUMNS))


def regenerate_api_key(args: argparse.Namespace) -> int:
    """Regenerate a key's token and print it; 0, or 1 on an API error (404 included)."""
    path = f"/v1/api-keys/{path_segment(args.id)}/regenerate"
    return run_request(args, "POST", path, _with_token_warning)
