"""inbound_message queries: the dedup gate, status transitions, and look-ups.

The database enforces which transitions are legal (sql/001_core.sql); these functions are the
only places that write the status, so every change also lands in inbound_message_event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from orderflow_ingest.db import Conn

MESSAGE_COLUMNS = """
  id::text AS id, org_id::text AS org_id, source, source_message_id, message_id_synthetic,
  from_email::text AS from_email, to_email::text AS to_email, subject, received_at,
  raw_storage_key, status, error_json, sha256, size_bytes, trace_id, envelope_sender,
  envelope_recipient, postfix_queue_id, auth_results, created_at, updated_at
"""


@dataclass(frozen=True)
class NewMessage:
    """What the delivery service knows about a message before it is safe in S3."""

    org_id: str
    source_message_id: str
    message_id_synthetic: bool
    from_email: str | None
    to_email: str | None
    subject: str | None
    received_at: datetime
    sha256: str
    size_bytes: int
    trace_id: str
    envelope_sender: str
    envelope_recipient: str
    postfix_queue_id: str | None
    auth_results: dict[str, Any] | None


def insert_received(conn: Conn, new: NewMessage) -> dict[str, Any] | None:
    """The dedup gate: insert a RECEIVED row, or return None when (org, Message-ID) exists."""
    return conn.execute(
        f"""
        INSERT INTO inbound_message (
          org_id, source, source_message_id, message_id_synthetic, from_email, to_email, subject,
          received_at, status, sha256, size_bytes, trace_id, envelope_sender, envelope_recipient,
          postfix_queue_id, auth_results)
        VALUES (%s, 'EMAIL', %s, %s, %s, %s, %s, %s, 'RECEIVED', %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (org_id, source, source_message_id) WHERE source_message_id IS NOT NULL
        DO NOTHING
        RETURNING {MESSAGE_COLUMNS}
        """,
        (
            new.org_id,
            new.source_message_id,
            new.message_id_synthetic,
            new.from_email,
            new.to_email,
            new.subject,
            new.received_at,
            new.sha256,
            new.size_bytes,
            new.trace_id,
            new.envelope_sender,
            new.envelope_recipient,
            new.postfix_queue_id,
            Jsonb(new.auth_results) if new.auth_results is not None else None,
        ),
    ).fetchone()


def find_by_message_id(conn: Conn, org_id: str, source_message_id: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM inbound_message"
        " WHERE org_id = %s AND source = 'EMAIL' AND source_message_id = %s",
        (org_id, source_message_id),
    ).fetchone()


def get_message(conn: Conn, inbound_message_id: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM inbound_message WHERE id = %s", (inbound_message_id,)
    ).fetchone()


def lock_message(conn: Conn, inbound_message_id: str) -> dict[str, Any] | None:
    """Row-lock a message for the rest of the transaction (one job at a time per message)."""
    return conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM inbound_message WHERE id = %s FOR UPDATE",
        (inbound_message_id,),
    ).fetchone()


def mark_stored(conn: Conn, inbound_message_id: str, raw_storage_key: str) -> bool:
    """RECEIVED -> STORED; False when the row was no longer RECEIVED (another copy won)."""
    cursor = conn.execute(
        "UPDATE inbound_message SET status = 'STORED', raw_storage_key = %s"
        " WHERE id = %s AND status = 'RECEIVED'",
        (raw_storage_key, inbound_message_id),
    )
    return cursor.rowcount == 1


def mark_parsed(conn: Conn, inbound_message_id: str) -> None:
    conn.execute(
        "UPDATE inbound_message SET status = 'PARSED', error_json = NULL"
        " WHERE id = %s AND status = 'STORED'",
        (inbound_message_id,),
    )


def mark_failed(
    conn: Conn,
    inbound_message_id: str,
    error: dict[str, Any],
    raw_storage_key: str | None = None,
) -> None:
    """End a message FAILED with the reason; its raw stays in S3 for `reprocess`."""
    conn.execute(
        "UPDATE inbound_message SET status = 'FAILED', error_json = %s,"
        " raw_storage_key = coalesce(%s, raw_storage_key)"
        " WHERE id = %s AND status IN ('RECEIVED', 'STORED')",
        (Jsonb(error), raw_storage_key, inbound_message_id),
    )


def reopen_for_reprocess(
    conn: Conn, inbound_message_id: str, reason: str = "operator reprocess"
) -> bool:
    """PARSED/FAILED -> STORED (operator `reprocess`); False if not in one of those states.

    Only orderflow_reprocess() (SECURITY DEFINER, sql/002) may make this transition: the
    runtime role cannot reopen a message by a plain UPDATE, whatever it sets in its session.
    """
    row = conn.execute(
        "SELECT orderflow_reprocess(%s, %s) AS reopened", (inbound_message_id, reason)
    ).fetchone()
    return bool(row and row["reopened"])
