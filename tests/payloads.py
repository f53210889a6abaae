"""The project's own webhook payloads for the 18 catalog events.

Each is shaped like the platform's documented example (same fields, same quirks: the unread
webhook says `"type": "ConversationUnreadUpdate"`, the provider outbound message says
`"type": "SMS"` and is posted to `/webhooks/ConversationProviderOutboundMessage`), with ids and
values of our own. `platform_event` adds the envelope fields the platform sends with every
webhook (`webhookId`, `timestamp`) and can move an event to another tenant.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

LOCATION_ID = "Lq7Tz2WbN9xKc4RmV1sA"
OTHER_LOCATION_ID = "Pz3Hd8FyQ5vJw2LnB6tE"
COMPANY_ID = "Cm4Xr9GkS2pWn7YbT3qD"

_CONTACT: dict[str, Any] = {
    "locationId": LOCATION_ID,
    "id": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
    "address1": "12 Harbour Road",
    "city": "Port Sable",
    "state": "CA",
    "companyName": "Fernhill Supplies",
    "country": "US",
    "source": "signup form",
    "dateAdded": "2025-03-14T09:26:53.589Z",
    "dateOfBirth": "1990-07-21T00:00:00.000Z",
    "dnd": False,
    "email": "ada.byrne@example.org",
    "name": "Ada Byrne",
    "firstName": "Ada",
    "lastName": "Byrne",
    "phone": "+15550100123",
    "postalCode": "94016",
    "tags": ["newsletter", "trial"],
    "website": "https://fernhill.example.org/",
    "attachments": [],
    "assignedTo": "us3Kd8Wq1Lz6Yv2Bn9Tm",
    "customFields": [{"id": "cf2Rn6Yp4Ws8Qk1Zt5Hb", "value": "Fernhill"}],
}

_DND_SETTINGS: dict[str, Any] = {
    channel: {"status": status, "message": "set by the contact", "code": "102"}
    for channel, status in (
        ("SMS", "active"),
        ("Call", "inactive"),
        ("Email", "active"),
        ("GMB", "inactive"),
        ("FB", "inactive"),
        ("WhatsApp", "active"),
    )
}

_NOTE: dict[str, Any] = {
    "locationId": LOCATION_ID,
    "id": "nt5Wq8Ze2Xc7Vr4Ty1Ua",
    "body": "Called back, wants a quote",
    "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
    "dateAdded": "2025-03-14T10:02:11.004Z",
}

_TASK: dict[str, Any] = {
    "locationId": LOCATION_ID,
    "id": "tk9Pl3Ok6Ij1Uh4Yg7Tf",
    "assignedTo": "us3Kd8Wq1Lz6Yv2Bn9Tm",
    "body": "Send the quote",
    "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
    "title": "Quote for Fernhill",
    "dateAdded": "2025-03-14T10:05:40.812Z",
    "dueDate": "2025-03-18T17:00:00.000Z",
}

_MESSAGE: dict[str, Any] = {
    "locationId": LOCATION_ID,
    "attachments": [],
    "body": "Is the quote ready?",
    "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
    "contentType": "text/plain",
    "conversationId": "cv2Bn5Mq8Wl1Xz4Kj7Hg",
    "dateAdded": "2025-03-15T08:12:09.337Z",
    "direction": "inbound",
    "messageType": "SMS",
    "status": "delivered",
    "conversationProviderId": "cp6Tr9Ye2Wq5Ui8Op1As",
}

_OPPORTUNITY: dict[str, Any] = {
    "locationId": LOCATION_ID,
    "id": "op4Dk7Fj1Gh9Sl3Za6Xc",
    "assignedTo": "us3Kd8Wq1Lz6Yv2Bn9Tm",
    "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
    "monetaryValue": 1250,
    "name": "Fernhill annual plan",
    "pipelineId": "pl8Vb2Nm5Qw9Er3Ty6Ui",
    "pipelineStageId": "0f6d2c1e-8a4b-4c39-9e57-2b1a7d3c5e80",
    "source": "referral",
    "status": "open",
    "dateAdded": "2025-03-15T11:45:00.000Z",
}


def _typed(type_: str, fields: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"type": type_, **copy.deepcopy(fields), **changes}


# Keyed by the catalog's event name; the payload's own `type` is what the platform sends.
PAYLOADS: dict[str, dict[str, Any]] = {
    "CampaignStatusUpdate": {
        "type": "CampaignStatusUpdate",
        "locationId": LOCATION_ID,
        "id": "cs1Qa4Ws7Ed2Rf5Tg8Yh",
        "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
        "status": "completed",
        "templateId": "tp3Zx6Cv9Bn2Mq5Wl8Ke",
        "replied": "Thanks!",
        "dateAdded": "2025-03-16T07:30:00.000Z",
    },
    "ContactCreate": _typed("ContactCreate", _CONTACT),
    "ContactDelete": _typed("ContactDelete", _CONTACT),
    "ContactDndUpdate": _typed("ContactDndUpdate", _CONTACT, dnd=True, dndSettings=_DND_SETTINGS),
    "ContactTagUpdate": _typed("ContactTagUpdate", _CONTACT, tags=["newsletter", "customer"]),
    "NoteCreate": _typed("NoteCreate", _NOTE),
    "NoteDelete": _typed("NoteDelete", _NOTE),
    "TaskCreate": _typed("TaskCreate", _TASK),
    "TaskDelete": _typed("TaskDelete", _TASK),
    "ConversationUnreadWebhook": {
        "type": "ConversationUnreadUpdate",
        "locationId": LOCATION_ID,
        "id": "cv2Bn5Mq8Wl1Xz4Kj7Hg",
        "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
        "deleted": False,
        "inbox": True,
        "starred": False,
        "unreadCount": 3,
    },
    "InboundMessage": _typed("InboundMessage", _MESSAGE),
    "OutboundMessage": _typed(
        "OutboundMessage", _MESSAGE, direction="outbound", source="app", body="Yes, attached."
    ),
    "ConversationProviderOutboundMessage": {
        "contactId": "ct7Hq2Lm9Zx4Vb8Nw1Rp",
        "locationId": LOCATION_ID,
        "messageId": "ms7Yu1Io4Pa8Sd2Fg5Hj",
        "type": "SMS",
        "phone": "+15550100123",
        "message": "Your quote is ready",
        "attachments": ["https://files.example.org/quote-7731.pdf"],
        "userId": "us3Kd8Wq1Lz6Yv2Bn9Tm",
    },
    "OpportunityCreate": _typed("OpportunityCreate", _OPPORTUNITY),
    "OpportunityDelete": _typed("OpportunityDelete", _OPPORTUNITY),
    "OpportunityStageUpdate": _typed(
        "OpportunityStageUpdate",
        _OPPORTUNITY,
        pipelineStageId="5c9e1a7b-3d2f-4e8a-b6c4-9f0d1e2a3b4c",
    ),
    "OpportunityStatusUpdate": _typed("OpportunityStatusUpdate", _OPPORTUNITY, status="won"),
    "OpportunityMonetaryValueUpdate": _typed(
        "OpportunityMonetaryValueUpdate", _OPPORTUNITY, monetaryValue=1800
    ),
}

# Events the shipped catalog gives no scope: accepted, stored, delivered to no one.
CONTACT_UPDATE: dict[str, Any] = _typed("ContactUpdate", _CONTACT)
APP_INSTALL: dict[str, Any] = {
    "type": "INSTALL",
    "appId": "ap5Lk8Jh2Gf6Ds9Aq3Wz",
    "locationId": LOCATION_ID,
    "companyId": COMPANY_ID,
    "userId": "us3Kd8Wq1Lz6Yv2Bn9Tm",
    "planId": "6650c2f1a9d3e47b8c0f1a2b",
    "trial": {"onTrial": False, "trialDuration": 0, "trialStartDate": None},
    "isWhitelabelCompany": False,
    "companyName": "Fernhill Agency",
}


def ingest_path(event: str) -> str:
    """Where the platform posts `event`: its own URL for the provider's outbound messages."""
    if event == "ConversationProviderOutboundMessage":
        return "/webhooks/ConversationProviderOutboundMessage"
    return "/webhooks"


def iso_now(offset_s: float = 0.0) -> str:
    """The current time (plus `offset_s`) as the platform writes `timestamp`."""
    ms = int((datetime.now(UTC).timestamp() + offset_s) * 1000)
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def platform_event(
    event: str,
    *,
    webhook_id: str | None = None,
    timestamp: str | None = None,
    envelope: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    """A fresh copy of `event`'s payload as the platform sends it.

    With `envelope` (the default) it carries a new `webhookId` (or the one given) and a
    current `timestamp` (or the one given); `changes` replace fields (e.g. `locationId`).
    """
    payload = copy.deepcopy(PAYLOADS[event])
    payload.update(changes)
    if envelope:
        payload["webhookId"] = webhook_id or str(uuid.uuid4())
        payload["timestamp"] = timestamp or iso_now()
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    """A payload as the platform's JSON body."""
    return json.dumps(payload).encode()
