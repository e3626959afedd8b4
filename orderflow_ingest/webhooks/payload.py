"""The thin webhook body: what happened and where to fetch it, never message content.

{"type", "id", "timestamp", "data": {org_id, inbound_message_id, document_id, trace_id,
sequence, links, details}}. `sequence` counts the events of one message in feed order (1, 2,
...), so a receiver can order deliveries that arrive out of order. `details` is the event's own
small data object (status, reason), which the event log keeps free of bodies by contract.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

# Events about deliveries are never delivered themselves: each delivery would make another.
NEVER_DELIVERED = frozenset({"webhook.delivered", "webhook.failed"})
EVENT_TYPE = re.compile(r"^[a-z][a-z_]*\.(?:[a-z][a-z_]*|\*)$")


def webhook_id(event_id: int) -> str:
    """The webhook-id of an event: stable across retries and endpoints."""
    return f"evt_{int(event_id)}"


def links(base_url: str, event: dict[str, Any]) -> dict[str, str]:
    base = base_url.rstrip("/")
    found: dict[str, str] = {}
    if event.get("inbound_message_id"):
        found["message"] = f"{base}/v1/messages/{event['inbound_message_id']}"
    if event.get("document_id"):
        found["document"] = f"{base}/v1/documents/{event['document_id']}"
    return found


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def build(event: dict[str, Any], sequence: int | None, base_url: str) -> str:
    """The exact body (compact JSON) signed and sent on every attempt of this event."""

    def text(key: str) -> str | None:
        value = event.get(key)
        return None if value is None else str(value)

    body = {
        "type": event["type"],
        "id": webhook_id(event["id"]),
        "timestamp": _iso(event["occurred_at"]),
        "data": {
            "org_id": text("org_id"),
            "inbound_message_id": text("inbound_message_id"),
            "document_id": text("document_id"),
            "trace_id": text("trace_id"),
            "sequence": sequence,
            "links": links(base_url, event),
            "details": event.get("data") or {},
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def type_matches(event_type: str, wanted: list[str] | tuple[str, ...]) -> bool:
    """An endpoint's filter: empty = everything; `message.*` = every message event."""
    if event_type in NEVER_DELIVERED:
        return False
    if not wanted:
        return True
    family = event_type.split(".", 1)[0] + ".*"
    return event_type in wanted or family in wanted


def check_event_types(types: list[str] | tuple[str, ...]) -> list[str]:
    """Validated, de-duplicated filter list; ValueError naming the first bad entry."""
    clean: list[str] = []
    for item in types:
        item = item.strip()
        if not EVENT_TYPE.match(item):
            raise ValueError(f"{item!r} is not an event type (message.parsed, message.*)")
        if item in NEVER_DELIVERED:
            raise ValueError(f"{item} is recorded in the event feed but never sent as a webhook")
        if item not in clean:
            clean.append(item)
    return clean
