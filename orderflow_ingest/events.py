"""The event log (sql/004_event_log.sql): record an event, read the feed after a cursor, prune.

Status changes and new documents are recorded by database triggers; `record` is for the events
only application code knows of (duplicates, conflicts, webhook outcomes). It writes in the
caller's transaction, so the event commits or rolls back with the change it describes.

The feed never skips an event although transactions commit out of id order: `read` returns
only events whose writing transaction is older than every transaction still running (txid below
the snapshot's xmin: that set is final), in (txid, id) order, and the cursor is the (txid, id)
of the last event returned. An event that becomes visible later has a txid at or above that
xmin, so it sorts after the cursor. A long-open transaction holds the feed back until it ends.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from orderflow_ingest.db import Conn

MAX_LIMIT = 1000
PRUNE_BATCH = 10_000
EVENT_COLUMNS = """
  id, txid::text AS txid, type, org_id::text AS org_id, occurred_at, trace_id,
  inbound_message_id::text AS inbound_message_id, document_id::text AS document_id, data
"""
# A position before every event.
START = (0, 0)


class InvalidCursor(ValueError):
    """A cursor that this module did not hand out."""


def encode_cursor(txid: int, event_id: int) -> str:
    """Opaque to consumers: base64url of "txid.id", no padding."""
    return base64.urlsafe_b64encode(f"{txid}.{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        txid_text, id_text = text.split(".")
        if not (txid_text.isdigit() and id_text.isdigit()):
            raise ValueError(text)
        position = (int(txid_text), int(id_text))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidCursor("not a cursor this feed handed out") from None
    if position[0] >= 2**63 or position[1] >= 2**63:
        raise InvalidCursor("not a cursor this feed handed out")
    return position


def record(
    conn: Conn,
    type: str,
    *,
    org_id: str | UUID | None,
    trace_id: str | None = None,
    inbound_message_id: str | UUID | None = None,
    document_id: str | UUID | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """Insert one event in the caller's transaction (the caller commits); returns its id."""
    row = conn.execute(
        "INSERT INTO event (type, org_id, trace_id, inbound_message_id, document_id, data)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (type, org_id, trace_id, inbound_message_id, document_id, Jsonb(data or {})),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def read(
    conn: Conn,
    after: str | None,
    *,
    org_ids: Sequence[UUID | str] | None,
    types: Sequence[str] | None = None,
    limit: int,
) -> tuple[list[dict[str, Any]], str]:
    """Events after `after` (None: from the oldest kept), oldest first, at most `limit`.

    org_ids None means every org (operators only; the API always passes the key's orgs) and an
    empty sequence means none. Returns the events, each with its own `cursor`, and the cursor
    to pass next time (the given one when nothing new is final yet).
    """
    txid, event_id = decode_cursor(after) if after else START
    if org_ids is not None and not org_ids:
        return [], after or encode_cursor(*START)
    conditions = [
        sql.SQL("(e.txid, e.id) > (%s::text::xid8, %s)"),
        sql.SQL("e.txid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))"),
    ]
    params: list[Any] = [str(txid), event_id]
    if org_ids is not None:
        conditions.append(sql.SQL("e.org_id = ANY(%s::uuid[])"))
        params.append([str(org) for org in org_ids])
    if types:
        conditions.append(sql.SQL("e.type = ANY(%s::text[])"))
        params.append(list(types))
    params.append(max(1, min(int(limit), MAX_LIMIT)))
    query = sql.SQL("SELECT {} FROM event e WHERE {} ORDER BY e.txid, e.id LIMIT %s").format(
        sql.SQL(EVENT_COLUMNS), sql.SQL(" AND ").join(conditions)
    )
    rows = conn.execute(query, params).fetchall()
    events = []
    for row in rows:
        event = dict(row)
        event["cursor"] = encode_cursor(int(event.pop("txid")), int(event["id"]))
        events.append(event)
    next_cursor = events[-1]["cursor"] if events else (after or encode_cursor(*START))
    return events, next_cursor


def for_message(conn: Conn, inbound_message_id: str) -> list[dict[str, Any]]:
    """Every event of one message, in the order they happened (its history)."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM event WHERE inbound_message_id = %s ORDER BY occurred_at, id",
        (inbound_message_id,),
    ).fetchall()
    for row in rows:
        row.pop("txid")
    return rows


def prune(conn: Conn, older_than: timedelta, batch: int = PRUNE_BATCH) -> int:
    """Delete events older than `older_than` in batches, committing each; returns how many.

    Runs through orderflow_prune_events (the runtime role cannot delete events itself), which
    refuses less than one day of retention.
    """
    total = 0
    while True:
        row = conn.execute(
            "SELECT orderflow_prune_events(%s, %s) AS gone", (older_than, batch)
        ).fetchone()
        conn.commit()
        gone = int(row["gone"]) if row else 0
        total += gone
        if gone < batch:
            return total
