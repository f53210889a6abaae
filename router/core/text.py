"""Operator-given text the router stores and shows: names and tokens, and how the CLI prints them.

Some characters make a terminal or a text renderer do something other than show a character:
C0 and C1 controls (ESC starts ANSI sequences, CR rewinds a line), DEL, the Unicode line and
paragraph separators, and the bidirectional formatting characters that reorder what follows
them (U+202E shows `exe.txt` as `txt.exe`). The API refuses them in names and tokens, and the
CLI escapes them in everything it prints, so data stored before they were refused cannot
drive the terminal either.

Each rule is one regex, stated in the OpenAPI document as the field's `pattern` and checked by
the same regex here, so the document and the server cannot disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Written as regex escapes, not characters, so the document's patterns stay readable ASCII.
CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
# What pydantic's and Python's whitespace stripping would remove, control characters aside.
_SPACE_CLASS = r" \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"

_CONTROL = re.compile(f"[{CONTROL_CLASS}]")

_EDGE = f"[^{_SPACE_CLASS}{CONTROL_CLASS}]"  # a character a name may start or end with
NAME_PATTERN = f"^{_EDGE}(?:[^{CONTROL_CLASS}]*{_EDGE})?$"
TOKEN_PATTERN = f"^[^{CONTROL_CLASS}]+$"
_NAME = re.compile(NAME_PATTERN)
_TOKEN = re.compile(TOKEN_PATTERN)


def control_character_refusal(value: str) -> str | None:
    """Why `value` may not be stored as operator text, or None: it holds a character that
    would drive a terminal (see the module docstring), named by its escape and position."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return (
        f"must not contain control or bidirectional formatting characters "
        f"(found {escape(found.group())} at position {found.start()})"
    )


@dataclass(frozen=True)
class JsonSchemaExtra:
    """Adds `values` to a type's JSON schema (for `Annotated`). Unlike `Field`'s
    `json_schema_extra`, it composes with a field's own `Field(json_schema_extra=...)`."""

    values: tuple[tuple[str, Any], ...]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.values)
        return schema


def documented_pattern(pattern: str) -> JsonSchemaExtra:
    """States `pattern` in the JSON schema; the type's validator must enforce it."""
    return JsonSchemaExtra((("pattern", pattern),))


def _matching(pattern: re.Pattern[str], otherwise: str) -> AfterValidator:
    """Accepts exactly what `pattern` (the documented one) matches; the error says why not."""

    def check(value: str) -> str:
        if pattern.fullmatch(value) is None:
            raise ValueError(control_character_refusal(value) or otherwise)
        return value

    return AfterValidator(check)


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    _matching(_NAME, "must not be blank, nor start or end with whitespace"),
    documented_pattern(NAME_PATTERN),
]
"""A name people recognise a thing by: 1-200 characters, no control characters, and no
whitespace at either end (it is refused, not stripped, so the document's rule is exact)."""

Token = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    _matching(_TOKEN, "must not be empty"),
    documented_pattern(TOKEN_PATTERN),
]
"""An identifier an operator gives (scope, event, location or company id): 1-200 characters,
no control characters."""


def escape(text: str) -> str:
    """`text` with every control and bidirectional formatting character written as its escape
    (`\\x1b`, `\\u202e`), so printing it cannot move the cursor, recolour or reorder output."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# json.dumps escapes C0 inside strings; the C0 characters it leaves are its own newlines.
_UNSAFE_IN_JSON = re.compile(f"(?![\\x00-\\x1f])[{CONTROL_CLASS}]")


def json_text(data: Any) -> str:
    """`data` as indented JSON with every control character written as a `\\uXXXX` escape
    (JSON itself escapes only C0 ones), so it stays valid JSON and inert in a terminal."""
    return _UNSAFE_IN_JSON.sub(
        lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, indent=2, ensure_ascii=False)
    )
