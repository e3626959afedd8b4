"""The read queries behind the operator commands: finding messages by whatever the operator
has in hand, selecting what to reprocess, finding what is stuck, and a message's history.

Writes go through messages.py (the only place a status changes); this module only reads.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from orderflow_ingest.db import Conn

# inbound_message columns plus the org's slug, for every operator view.
COLUMNS = """
  m.id::text AS id, m.org_id::text AS org_id, o.slug::text AS org_slug, o.name AS org_name,
  o.status AS org_status, m.source, m.source_message_id, m.message_id, m.message_id_synthetic,
  m.from_email::text AS from_email, m.to_email::text AS to_email, m.subject, m.received_at,
  m.raw_storage_key, m.status, m.error_json, m.sha256, m.size_bytes, m.trace_id,
  m.envelope_sender, m.envelope_recipient, m.postfix_queue_id, m.auth_results,
  m.created_at, m.updated_at
"""
FROM = "FROM inbound_message m JOIN org o ON o.id = m.org_id"

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# Postfix queue ids: short (hex, 6+ chars) or long (enable_long_queue_ids: base-52 with a 'z').
QUEUE_ID = re.compile(
    r"^(?:[0-9A-F]{6,16}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}z[0-9A-Za-z]+)$"
)
# inbound_message.status in its order (sql/001_core.sql's trigger enforces the transitions).
STATUSES = ("RECEIVED", "STORED", "PARSED", "FAILED")
# Not yet PARSED or FAILED: what sweep, the exporter's ingest lag and org delete wait on.
IN_FLIGHT = ("RECEIVED", "STORED")
# What `reprocess` may select: everything but a RECEIVED row, whose delivery is still running.
REPROCESSABLE = tuple(sorted(set(STATUSES) - {"RECEIVED"}))


@dataclass(frozen=True)
class Resolved:
    """Messages an identifier names, and what kind of identifier it turned out to be."""

    kind: str  # inbound_message_id, document_id, trace_id, message_id, queue_id
    messages: list[dict[str, Any]]
    document_id: str | None = None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return "-" in text


def _where(conn: Conn, condition: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {COLUMNS} {FROM} WHERE {condition} ORDER BY m.received_at, o.slug", params
    ).fetchall()


def resolve(conn: Conn, identifier: str, org_slug: str | None = None) -> Resolved:
    """Messages named by an inbound_message id, document id, trace_id, Message-ID or queue id.

    A Message-ID or a queue id can name several rows (one per org recipient); `org_slug`
    narrows them down.
    """
    text = identifier.strip()
    resolved = _resolve(conn, text)
    if org_slug is not None:
        slug = org_slug.lower()
        return Resolved(
            resolved.kind,
            [row for row in resolved.messages if row["org_slug"] == slug],
            resolved.document_id,
        )
    return resolved


def message_in_orgs(
    conn: Conn, inbound_message_id: str, org_ids: Iterable[str]
) -> dict[str, Any] | None:
    """One message, only if it belongs to one of `org_ids` (an API key's scope)."""
    return conn.execute(
        f"SELECT {COLUMNS} {FROM} WHERE m.id = %s AND m.org_id = ANY(%s::uuid[])",
        (inbound_message_id, list(org_ids)),
    ).fetchone()


def postfix_kind(text: str) -> str:
    """What Postfix could know an identifier as, without the database: message_id, queue_id
    or unknown (a row id or trace_id exists only in PostgreSQL)."""
    text = text.strip()
    if "@" in text or text.startswith("<"):
        return "message_id"
    if QUEUE_ID.match(text) and not _is_uuid(text):
        return "queue_id"
    return "unknown"


def _resolve(conn: Conn, text: str) -> Resolved:
    if _is_uuid(text):
        rows = _where(conn, "m.id = %s", (text,))
        if rows:
            return Resolved("inbound_message_id", rows)
        doc = conn.execute(
            "SELECT inbound_message_id::text AS id FROM document WHERE id = %s", (text,)
        ).fetchone()
        if doc is not None:
            return Resolved("document_id", _where(conn, "m.id = %s", (doc["id"],)), text)
        return Resolved("inbound_message_id", [])
    if TRACE_ID.match(text):
        rows = _where(conn, "m.trace_id = %s", (text,))
        if rows:
            return Resolved("trace_id", rows)
    if "@" in text or text.startswith("<"):
        bracketed = text if text.startswith("<") else f"<{text}>"
        rows = _where(conn, "m.message_id IN (%s, %s)", (bracketed, text))
        return Resolved("message_id", rows)
    if QUEUE_ID.match(text):
        return Resolved("queue_id", _where(conn, "m.postfix_queue_id = %s", (text,)))
    return Resolved("unknown", [])


@dataclass(frozen=True)
class Selection:
    """What `reprocess` should run on, besides explicit identifiers."""

    org_slug: str | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None


def select_messages(conn: Conn, selection: Selection) -> list[dict[str, Any]]:
    """Messages by org, status and received time, oldest first."""
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if selection.org_slug:
        conditions.append(sql.SQL("o.slug = %s"))
        params.append(selection.org_slug.lower())
    if selection.statuses:
        conditions.append(sql.SQL("m.status = ANY(%s)"))
        params.append(list(selection.statuses))
    if selection.since is not None:
        conditions.append(sql.SQL("m.received_at >= %s"))
        params.append(selection.since)
    if selection.until is not None:
        conditions.append(sql.SQL("m.received_at < %s"))
        params.append(selection.until)
    where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")
    query = sql.SQL("SELECT {} {} WHERE {} ORDER BY m.received_at, m.id").format(
        sql.SQL(COLUMNS), sql.SQL(FROM), where
    )
    if selection.limit is not None:
        query = sql.Composed([query, sql.SQL(" LIMIT %s")])
        params.append(selection.limit)
    return conn.execute(query, params).fetchall()


def stuck_messages(conn: Conn, older_than: timedelta, limit: int) -> list[dict[str, Any]]:
    """RECEIVED or STORED rows unchanged for longer than `older_than` (partial index)."""
    return conn.execute(
        f"SELECT {COLUMNS}, extract(epoch FROM now() - m.updated_at)::float8 AS stuck_seconds"
        f" {FROM} WHERE m.status IN ('RECEIVED', 'STORED')"
        " AND m.updated_at < now() - %s ORDER BY m.updated_at LIMIT %s",
        (older_than, limit),
    ).fetchall()


def lock_if_status(conn: Conn, inbound_message_id: str, status: str) -> dict[str, Any] | None:
    """Row-lock a message still in `status`; None if it moved on or a job holds the lock
    (the extraction job locks its row for its whole run: skipping it never waits on a job)."""
    return conn.execute(
        f"SELECT {COLUMNS} {FROM} WHERE m.id = %s AND m.status = %s FOR UPDATE OF m SKIP LOCKED",
        (inbound_message_id, status),
    ).fetchone()


def history(conn: Conn, inbound_message_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT status, at, error_json FROM inbound_message_event"
        " WHERE inbound_message_id = %s ORDER BY at, id",
        (inbound_message_id,),
    ).fetchall()


def statuses_of(conn: Conn, ids: list[str]) -> dict[str, str]:
    """inbound_message id -> its status now, for the ids that exist."""
    rows = conn.execute(
        "SELECT id::text AS id, status FROM inbound_message WHERE id = ANY(%s::uuid[])", (ids,)
    ).fetchall()
    return {row["id"]: row["status"] for row in rows}


def in_flight_by_status(conn: Conn) -> list[dict[str, Any]]:
    """Per status not yet PARSED or FAILED: how many messages, and the oldest one's age in
    seconds (the exporter's ingest lag). The IN list is IN_FLIGHT written as the partial
    index's predicate (sql/001_core.sql), so the planner can use that index."""
    return conn.execute(
        "SELECT status, count(*) AS messages,"
        " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds"
        " FROM inbound_message WHERE status IN ('RECEIVED', 'STORED') GROUP BY status"
    ).fetchall()


def document_counts(conn: Conn, ids: list[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT inbound_message_id::text AS id, count(*) AS n FROM document"
        " WHERE inbound_message_id = ANY(%s::uuid[]) GROUP BY inbound_message_id",
        (ids,),
    ).fetchall()
    counts = dict.fromkeys(ids, 0)
    counts.update({row["id"]: int(row["n"]) for row in rows})
    return counts
