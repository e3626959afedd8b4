"""inbound_message queries: the dedup gate, status transitions, and look-ups.

The database enforces which transitions are legal (sql/001_core.sql); these functions are the
only places that write the status; a trigger records every change in the event log (sql/004).
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
  envelope_recipient, postfix_queue_id, auth_results, created_at, updated_at, content_sha256,
  conflict_of::text AS conflict_of, conflict_message_id, message_id
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
    # sha256 of the message as sent, without our own trace fields (the dedup gate's content);
    # None: the raw sha256 stands for the content (callers that never saw trace fields).
    content_sha256: str | None = None


# Rows of one org and Message-ID with the same content as the message at hand. A row from
# before content hashes (content_sha256 NULL) is the same content when its raw bytes are.
# `message_id` is the Message-ID of first messages and conflicts alike (sql/003).
_SAME_CONTENT = """
  org_id = %(org_id)s::uuid AND source = 'EMAIL' AND message_id = %(message_id)s
  AND (content_sha256 = %(content_sha256)s OR (content_sha256 IS NULL AND sha256 = %(sha256)s))
"""

_INSERT_COLUMNS = """
  org_id, source, source_message_id, conflict_message_id, message_id_synthetic, from_email,
  to_email, subject, received_at, status, sha256, size_bytes, trace_id, envelope_sender,
  envelope_recipient, postfix_queue_id, auth_results, content_sha256, conflict_of
"""
_INSERT_VALUES = """
  %(org_id)s::uuid, 'EMAIL', %(source_message_id)s::text, %(conflict_message_id)s::text,
  %(synthetic)s, %(from_email)s::citext, %(to_email)s::citext, %(subject)s::text,
  %(received_at)s, 'RECEIVED', %(sha256)s::text, %(size_bytes)s, %(trace_id)s::text,
  %(envelope_sender)s::text, %(envelope_recipient)s::text, %(postfix_queue_id)s::text,
  %(auth_results)s, %(content_sha256)s::text, %(conflict_of)s::uuid
"""


def insert_received(conn: Conn, new: NewMessage) -> dict[str, Any] | None:
    """The dedup gate: insert a RECEIVED row, or return None when a row of the same org,
    Message-ID and content exists (a duplicate: the caller finds it with `find_same_content`).

    The first message of a Message-ID holds it in source_message_id, under 001's unique index
    (org_id, source, source_message_id), the very one the previous release's
    `ON CONFLICT` names: so this insert and an old host's collapse into one row. Another
    content under that Message-ID is a new row linked to the first one by `conflict_of`, its
    Message-ID in conflict_message_id. An advisory lock per (org, Message-ID), held until the
    caller commits, serialises this release's copies of one Message-ID, so two conflicting
    copies arriving at once still see each other; the unique indexes alone collapse identical
    concurrent copies (an old host takes no such lock).
    """
    params: dict[str, Any] = {
        "org_id": new.org_id,
        "message_id": new.source_message_id,
        "synthetic": new.message_id_synthetic,
        "from_email": new.from_email,
        "to_email": new.to_email,
        "subject": new.subject,
        "received_at": new.received_at,
        "sha256": new.sha256,
        "size_bytes": new.size_bytes,
        "trace_id": new.trace_id,
        "envelope_sender": new.envelope_sender,
        "envelope_recipient": new.envelope_recipient,
        "postfix_queue_id": new.postfix_queue_id,
        "auth_results": Jsonb(new.auth_results) if new.auth_results is not None else None,
        "content_sha256": new.content_sha256 or new.sha256,
    }
    conn.execute(
        "SELECT pg_advisory_xact_lock("
        "hashtextextended(%(org_id)s::text || ' ' || %(message_id)s::text, 0))",
        params,
    )
    # Twice at most: a first-copy insert that loses to an old host's concurrent insert of
    # another content finds that row committed and becomes a conflict of it.
    for _ in range(2):
        # One round trip for both questions: is this content here, and which row holds
        # the Message-ID first (the one a different content becomes a conflict of)?
        found = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM inbound_message WHERE {_SAME_CONTENT}) AS same,"
            " (SELECT id::text FROM inbound_message"
            "  WHERE org_id = %(org_id)s::uuid AND source = 'EMAIL'"
            "  AND source_message_id = %(message_id)s) AS first_id",
            params,
        ).fetchone()
        assert found is not None  # a SELECT without FROM always returns its one row
        if found["same"]:
            return None
        if found["first_id"] is None:
            row = conn.execute(
                f"INSERT INTO inbound_message ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES})"
                " ON CONFLICT (org_id, source, source_message_id)"
                " WHERE source_message_id IS NOT NULL DO NOTHING"
                f" RETURNING {MESSAGE_COLUMNS}",
                {
                    **params,
                    "source_message_id": new.source_message_id,
                    "conflict_message_id": None,
                    "conflict_of": None,
                },
            ).fetchone()
        else:
            row = conn.execute(
                f"INSERT INTO inbound_message ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES})"
                " ON CONFLICT (conflict_of, content_sha256) WHERE conflict_of IS NOT NULL"
                f" DO NOTHING RETURNING {MESSAGE_COLUMNS}",
                {
                    **params,
                    "source_message_id": None,
                    "conflict_message_id": new.source_message_id,
                    "conflict_of": found["first_id"],
                },
            ).fetchone()
        if row is not None:
            return row
    return None


def find_same_content(
    conn: Conn, org_id: str, source_message_id: str, content_sha256: str, sha256: str
) -> dict[str, Any] | None:
    """The row a duplicate delivery duplicates (see `insert_received`)."""
    params = {
        "org_id": org_id,
        "message_id": source_message_id,
        "content_sha256": content_sha256,
        "sha256": sha256,
    }
    return conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM inbound_message WHERE {_SAME_CONTENT}"
        " ORDER BY created_at, id LIMIT 1",
        params,
    ).fetchone()


def find_by_message_id(conn: Conn, org_id: str, source_message_id: str) -> dict[str, Any] | None:
    """The first message of this org and Message-ID (conflicting later ones link to it)."""
    return conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM inbound_message"
        " WHERE org_id = %s AND source = 'EMAIL' AND message_id = %s"
        " ORDER BY conflict_of IS NOT NULL, created_at, id LIMIT 1",
        (org_id, source_message_id),
    ).fetchone()


def message_id_conflicts(conn: Conn, inbound_message_id: str) -> list[dict[str, Any]]:
    """The other messages of the same org and Message-ID with other content, oldest first:
    for the first one its conflicts, for a conflict the first one and its siblings."""
    return conn.execute(
        f"""
        SELECT {MESSAGE_COLUMNS} FROM inbound_message other
        WHERE (other.org_id, other.source, other.message_id) = (
            SELECT m.org_id, m.source, m.message_id FROM inbound_message m
            WHERE m.id = %s)
          AND other.id <> %s
        ORDER BY other.created_at, other.id
        """,
        (inbound_message_id, inbound_message_id),
    ).fetchall()


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
