"""The API's message queries: every one filtered by the calling key's orgs."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from orderflow_ingest.db import Conn

SUMMARY = """
  m.id::text AS id, m.org_id::text AS org_id, m.status, m.message_id,
  m.message_id_synthetic, m.from_email::text AS from_email, m.to_email::text AS to_email,
  m.subject, m.received_at, m.size_bytes, m.sha256, m.trace_id,
  (SELECT count(*) FROM document d WHERE d.inbound_message_id = m.id)::int AS document_count
"""
DETAIL = (
    SUMMARY
    + """, m.envelope_sender, m.envelope_recipient, m.postfix_queue_id, m.error_json AS error,
  m.auth_results AS verdicts, m.raw_storage_key"""
)


class InvalidPageCursor(ValueError):
    pass


@dataclass(frozen=True)
class SearchTerm:
    """One term of the inbox's search language (inbox/search.py parses it): a field, its
    value (already typed: str, datetime or int) and whether it is negated (`-from:x`)."""

    field: str
    value: Any = None
    negate: bool = False


# Each search field's condition on inbound_message m; %s is the term's value. Text fields
# match a case-insensitive substring with ILIKE, so the trigram indexes of
# sql/008_inbox_users.sql serve them; EXISTS conditions stay bare so the planner can turn them
# into (anti-)joins. A NULL column never matches, negated or not.
TERM_SQL: dict[str, str] = {
    "from": "m.from_email::text ILIKE %s",
    "to": "(m.to_email::text ILIKE %s OR m.envelope_recipient ILIKE %s)",
    "subject": "m.subject ILIKE %s",
    "text": "(m.subject ILIKE %s OR m.from_email::text ILIKE %s)",
    "message-id": "m.message_id IN ('<' || %s || '>', %s)",
    "status": "m.status = %s",
    "has:document": "EXISTS (SELECT 1 FROM document d WHERE d.inbound_message_id = m.id)",
    "filename": "EXISTS (SELECT 1 FROM document d WHERE d.inbound_message_id = m.id"
    " AND d.file_name ILIKE %s)",
    "after": "m.received_at >= %s",
    "before": "m.received_at < %s",
    "larger": "m.size_bytes > %s",
    "smaller": "m.size_bytes < %s",
}
SUBSTRING_FIELDS = frozenset({"from", "to", "subject", "text", "filename"})
NEVER_NULL_FIELDS = frozenset({"has:document", "filename", "status", "after", "before"})


def _contains_pattern(value: str) -> str:
    """An ILIKE pattern matching `value` anywhere, its own % _ and \\ taken literally."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _term_condition(term: SearchTerm) -> tuple[sql.Composable, list[Any]]:
    template = TERM_SQL[term.field]
    value = term.value
    if term.field == "message-id":
        value = value.strip().strip("<>")
    elif term.field in SUBSTRING_FIELDS:
        value = _contains_pattern(value)
    params = [value] * template.count("%s")
    condition: sql.Composable = sql.SQL(template)
    if not term.negate:
        return condition, params
    if term.field not in NEVER_NULL_FIELDS:
        condition = sql.SQL("coalesce(({}), false)").format(condition)
    return sql.SQL("NOT {}").format(condition), params


@dataclass(frozen=True)
class MessageFilter:
    statuses: tuple[str, ...] = ()
    received_after: datetime | None = None
    received_before: datetime | None = None
    sender: str | None = None
    subject: str | None = None
    message_id: str | None = None
    has_documents: bool | None = None
    # The inbox's search terms, all of which must hold.
    terms: tuple[SearchTerm, ...] = ()


def encode_page_cursor(received_at: datetime, message_id: str) -> str:
    return base64.urlsafe_b64encode(f"{received_at.isoformat()}|{message_id}".encode()).decode()


def decode_page_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        when, message_id = text.split("|")
        import uuid

        return datetime.fromisoformat(when), str(uuid.UUID(message_id))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidPageCursor("not a cursor this list handed out") from None


def list_messages(
    conn: Conn, org_ids: Sequence[str], where: MessageFilter, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; a page and the cursor of the next one (None at the end)."""
    # One org (every inbox page, most keys): `=` lets the (org_id, received_at, id) index
    # hand rows over newest first, so a page stops after limit+1 rows; PostgreSQL < 17
    # cannot walk an index in order under `= ANY(array)`.
    conditions: list[sql.Composable]
    params: list[Any]
    if len(org_ids) == 1:
        conditions, params = [sql.SQL("m.org_id = %s::uuid")], [org_ids[0]]
    else:
        conditions, params = [sql.SQL("m.org_id = ANY(%s::uuid[])")], [list(org_ids)]
    if where.statuses:
        conditions.append(sql.SQL("m.status = ANY(%s)"))
        params.append(list(where.statuses))
    if where.received_after is not None:
        conditions.append(sql.SQL("m.received_at >= %s"))
        params.append(where.received_after)
    if where.received_before is not None:
        conditions.append(sql.SQL("m.received_at < %s"))
        params.append(where.received_before)
    if where.sender:
        conditions.append(sql.SQL("(m.from_email = %s::citext OR m.envelope_sender = %s)"))
        params.extend([where.sender, where.sender])
    if where.subject:
        conditions.append(sql.SQL("strpos(lower(m.subject), lower(%s)) > 0"))
        params.append(where.subject)
    if where.message_id:
        bare = where.message_id.strip().strip("<>")
        conditions.append(sql.SQL("m.message_id IN (%s, %s)"))
        params.extend([f"<{bare}>", bare])
    if where.has_documents is not None:
        conditions.append(
            sql.SQL(
                ("" if where.has_documents else "NOT ")
                + "EXISTS (SELECT 1 FROM document d WHERE d.inbound_message_id = m.id)"
            )
        )
    for term in where.terms:
        condition, term_params = _term_condition(term)
        conditions.append(condition)
        params.extend(term_params)
    if cursor:
        received_at, last_id = decode_page_cursor(cursor)
        conditions.append(sql.SQL("(m.received_at, m.id) < (%s, %s::uuid)"))
        params.extend([received_at, last_id])
    params.append(limit + 1)
    query = sql.SQL(
        "SELECT {} FROM inbound_message m WHERE {} ORDER BY m.received_at DESC, m.id DESC LIMIT %s"
    ).format(sql.SQL(SUMMARY), sql.SQL(" AND ").join(conditions))
    rows = conn.execute(query, params).fetchall()
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_page_cursor(page[-1]["received_at"], page[-1]["id"]) if more else None
    return page, next_cursor


def get_message(conn: Conn, org_ids: Sequence[str], message_id: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {DETAIL} FROM inbound_message m WHERE m.id = %s AND m.org_id = ANY(%s::uuid[])",
        (message_id, list(org_ids)),
    ).fetchone()


def document_detail(conn: Conn, org_ids: Sequence[str], document_id: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT id::text AS id, org_id::text AS org_id,"
        " inbound_message_id::text AS inbound_message_id, part_path, file_name, mime_type,"
        " size_bytes, sha256, status, decision_json AS decision, created_at FROM document"
        " WHERE id = %s AND org_id = ANY(%s::uuid[])",
        (document_id, list(org_ids)),
    ).fetchone()


def get_document(conn: Conn, org_ids: Sequence[str], document_id: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT id::text AS id, org_id::text AS org_id, file_name, storage_key FROM document"
        " WHERE id = %s AND org_id = ANY(%s::uuid[])",
        (document_id, list(org_ids)),
    ).fetchone()


def conflicts(conn: Conn, org_ids: Sequence[str], message_id: str) -> list[dict[str, Any]]:
    """Messages of the same org and Message-ID with other content: the first one this one
    conflicts with, and the later ones that conflict with this one."""
    return conn.execute(
        "SELECT o.id::text AS id, o.status, o.received_at, o.conflict_of::text AS conflict_of"
        " FROM inbound_message m JOIN inbound_message o"
        " ON o.id = m.conflict_of OR o.conflict_of = m.id"
        " WHERE m.id = %s AND m.org_id = ANY(%s::uuid[]) AND o.org_id = m.org_id"
        " ORDER BY o.received_at",
        (message_id, list(org_ids)),
    ).fetchall()
