"""The operator API's scopes (the key-scope model `read_<module>` / `write_<module>`) and the
authenticated caller that holds some of them."""

from __future__ import annotations

from dataclasses import dataclass

OPERATOR_SCOPES = (
    "read_subscribers",
    "write_subscribers",
    "read_deliveries",
    "write_deliveries",
    "read_events",
    "read_catalog",
    "write_api_keys",
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the API key it used (None for the admin token), its scopes,
    and the one subscriber it is confined to (None: an operator, seeing every subscriber)."""

    key_id: str | None
    scopes: frozenset[str]
    subscriber_id: str | None = None


ADMIN = Principal(key_id=None, scopes=frozenset(OPERATOR_SCOPES))
