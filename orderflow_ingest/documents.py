"""document and inbound_message_part queries: what the extraction job found in a message.

Both tables are keyed by (inbound_message_id, part_path), and every write here is an upsert on
that key, so a re-run of the job (a retry after a crash, or an operator's `reprocess`) updates
the rows it wrote before instead of adding new ones, and document ids stay the same.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

DOCUMENT_COLUMNS = """
  id::text AS id, org_id::text AS org_id, inbound_message_id::text AS inbound_message_id,
  part_path, file_name, mime_type, size_bytes, sha256, storage_key, status, decision_json,
  created_at, updated_at
"""


def upsert_document(
    conn: psycopg.Connection[Any],
    *,
    org_id: str,
    inbound_message_id: str,
    part_path: str,
    file_name: str,
    mime_type: str,
    size_bytes: int,
    sha256: str,
    storage_key: str,
    status: str,
    decision: dict[str, Any],
) -> dict[str, Any]:
    """Insert the document of one MIME part, or refresh the one a previous run wrote.

    Returns the row plus `inserted` (False when it already existed).
    """
    row = conn.execute(
        f"""
        INSERT INTO document (
          org_id, inbound_message_id, part_path, file_name, mime_type, size_bytes, sha256,
          storage_key, status, decision_json)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (inbound_message_id, part_path) DO UPDATE SET
          file_name = EXCLUDED.file_name, mime_type = EXCLUDED.mime_type,
          size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256,
          storage_key = EXCLUDED.storage_key, status = EXCLUDED.status,
          decision_json = EXCLUDED.decision_json, updated_at = now()
        RETURNING {DOCUMENT_COLUMNS}, (xmax = 0) AS inserted
        """,
        (
            org_id,
            inbound_message_id,
            part_path,
            file_name,
            mime_type,
            size_bytes,
            sha256,
            storage_key,
            status,
            Jsonb(decision),
        ),
    ).fetchone()
    assert row is not None
    return row


def record_part(
    conn: psycopg.Connection[Any],
    inbound_message_id: str,
    part_path: str,
    content_type: str | None,
    decision: str,
    reason: str,
) -> None:
    """Record why a MIME part is not a document (containers, bodies, signatures, ...)."""
    conn.execute(
        """
        INSERT INTO inbound_message_part (
          inbound_message_id, part_path, content_type, decision, reason)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (inbound_message_id, part_path) DO UPDATE SET
          content_type = EXCLUDED.content_type, decision = EXCLUDED.decision,
          reason = EXCLUDED.reason
        """,
        (inbound_message_id, part_path, content_type or None, decision, reason),
    )


def documents_for_message(
    conn: psycopg.Connection[Any], inbound_message_id: str
) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM document WHERE inbound_message_id = %s ORDER BY part_path",
        (inbound_message_id,),
    ).fetchall()


def parts_for_message(
    conn: psycopg.Connection[Any], inbound_message_id: str
) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT part_path, content_type, decision, reason FROM inbound_message_part"
        " WHERE inbound_message_id = %s ORDER BY part_path",
        (inbound_message_id,),
    ).fetchall()


def get_document(conn: psycopg.Connection[Any], document_id: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM document WHERE id = %s", (document_id,)
    ).fetchone()
