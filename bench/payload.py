"""The benchmark's event: a ContactCreate-shaped payload padded to about 1 KB.

Every event gets its own contact `id` and `webhookId` (so the router's dedupe sees each as
new); the padding is a second custom field, so the body keeps the documented shape.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE_PATH = Path(__file__).with_name("contact_create.json")
BODY_SIZE = 1024
# Width of the per-event fields, so every body has the same length whatever its index.
ID_WIDTH = 24


def _template() -> str:
    payload = json.loads(TEMPLATE_PATH.read_text())
    payload["id"] = "@ID@"
    payload["webhookId"] = "@WID@"
    payload["timestamp"] = "2024-03-04T10:20:30.400Z"
    payload["customFields"].append({"id": "bnchPadding000000001", "value": "@PAD@"})
    return json.dumps(payload, separators=(",", ":"))


def _padded() -> str:
    text = _template()
    sample = text.replace("@ID@", "x" * ID_WIDTH).replace("@WID@", "x" * ID_WIDTH)
    pad = BODY_SIZE - len(sample.replace("@PAD@", ""))
    return text.replace("@PAD@", "p" * max(pad, 0))


_TEXT = _padded()
_HEAD, _, _REST = _TEXT.partition("@ID@")
_MIDDLE, _, _TAIL = _REST.partition("@WID@")


def event_body(tag: str, index: int) -> bytes:
    """The body of event `index` of a sender tagged `tag` (unique ids; BODY_SIZE bytes when
    `tag` has at most 8 characters)."""
    ident = f"{tag}{index:016d}"[-ID_WIDTH:].rjust(ID_WIDTH, "0")
    return f"{_HEAD}{ident}{_MIDDLE}wh{ident[2:]}{_TAIL}".encode()


def body_parts() -> tuple[str, str, str]:
    """The body around its two per-event fields, for generators that build bodies themselves
    (bench/wrk.py): head + ident + middle + "wh" + ident[2:] + tail, where ident is
    ID_WIDTH characters."""
    return _HEAD, _MIDDLE, _TAIL
