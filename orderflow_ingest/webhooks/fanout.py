"""The dispatcher's first half: turn new events of the feed into webhook_delivery rows.

One transaction per batch: lock the feed position (one dispatcher fans out at a time; the
others skip and only deliver), read the events after it, insert one delivery per matching
endpoint (ON CONFLICT DO NOTHING on (endpoint, event)), number each message's events, and move
the position. A dispatcher killed anywhere in between leaves the position where it was and
nothing committed, so a restart neither loses an event nor makes a second delivery.
"""

from __future__ import annotations

from typing import Any

from orderflow_ingest import events
from orderflow_ingest.db import Conn
from orderflow_ingest.webhooks import payload

BATCH = 500
STATE_NAME = "fanout"

LOCK_POSITION = """
SELECT cursor FROM webhook_dispatch_state WHERE name = %s FOR UPDATE SKIP LOCKED
"""
MOVE_POSITION = "UPDATE webhook_dispatch_state SET cursor = %s, updated_at = now() WHERE name = %s"
TOUCH_POSITION = "UPDATE webhook_dispatch_state SET updated_at = now() WHERE name = %s"
ACTIVE_ENDPOINTS = """
SELECT id, org_id::text AS org_id, event_types, created_at
FROM webhook_endpoint
WHERE enabled AND deleted_at IS NULL AND org_id = ANY(%s::uuid[])
"""
NEXT_SEQUENCE = """
INSERT INTO webhook_message_sequence AS s (inbound_message_id, last_sequence) VALUES (%s, 1)
ON CONFLICT (inbound_message_id) DO UPDATE SET last_sequence = s.last_sequence + 1
RETURNING last_sequence
"""
INSERT_DELIVERY = """
INSERT INTO webhook_delivery (endpoint_id, org_id, event_id, event_type, event_occurred_at,
                              inbound_message_id, webhook_id, payload, next_attempt_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (endpoint_id, event_id) DO NOTHING
"""


def fan_out_once(conn: Conn, base_url: str, batch: int = BATCH) -> int | None:
    """One batch; returns the events consumed, or None when another dispatcher holds the
    position. Commits."""
    with conn.transaction():
        row = conn.execute(LOCK_POSITION, (STATE_NAME,)).fetchone()
        if row is None:
            return None
        found, cursor = events.read(conn, row["cursor"], org_ids=None, types=None, limit=batch)
        if not found:
            conn.execute(TOUCH_POSITION, (STATE_NAME,))
            return 0
        org_ids = sorted({event["org_id"] for event in found if event["org_id"]})
        endpoints = conn.execute(ACTIVE_ENDPOINTS, (org_ids,)).fetchall()
        for event in found:
            _fan_out_event(conn, event, endpoints, base_url)
        conn.execute(MOVE_POSITION, (cursor, STATE_NAME))
    return len(found)


def _fan_out_event(
    conn: Conn, event: dict[str, Any], endpoints: list[dict[str, Any]], base_url: str
) -> None:
    sequence = None
    if event["inbound_message_id"] and event["type"] not in payload.NEVER_DELIVERED:
        seq_row = conn.execute(NEXT_SEQUENCE, (event["inbound_message_id"],)).fetchone()
        sequence = int(seq_row["last_sequence"]) if seq_row else None
    targets = [
        endpoint
        for endpoint in endpoints
        if endpoint["org_id"] == event["org_id"]
        and event["occurred_at"] >= endpoint["created_at"]
        and payload.type_matches(event["type"], endpoint["event_types"])
    ]
    if not targets:
        return
    body = payload.build(event, sequence, base_url)
    for endpoint in targets:
        conn.execute(
            INSERT_DELIVERY,
            (
                endpoint["id"],
                event["org_id"],
                event["id"],
                event["type"],
                event["occurred_at"],
                event["inbound_message_id"],
                payload.webhook_id(event["id"]),
                body,
            ),
        )


def fan_out_all(conn: Conn, base_url: str, batch: int = BATCH, max_batches: int = 20) -> int:
    """Batches until the feed is drained (or max_batches, so deliveries are not starved)."""
    total = 0
    for _ in range(max_batches):
        consumed = fan_out_once(conn, base_url, batch)
        if not consumed:
            break
        total += consumed
        if consumed < batch:
            break
    return total
