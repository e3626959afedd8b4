"""Helpers of the data-lifecycle tests: orgs of their own, real mail through the stack's
Postfix, extraction run in-process on exactly that message (the session stack has no
workers), and S3 presence checks."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from mime_builders import PNG
from ops_support import wait_status
from psycopg.rows import dict_row
from samples import address, minimal_pdf, order_email

from orderflow_ingest import orgs
from orderflow_ingest.jobs import attachments, context
from orderflow_ingest.lifecycle import objects

PDF = minimal_pdf("PO 1616")


def owner_conn(stack: Any) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(
        stack.settings.migrate_url, autocommit=True, row_factory=dict_row, connect_timeout=10
    )


def new_org(stack: Any, prefix: str) -> dict[str, Any]:
    """An org of this test alone, so no other test's rows enter its selections."""
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with owner_conn(stack) as conn:
        return orgs.add_org(conn, slug, slug)  # type: ignore[arg-type]


def deliver(stack: Any, db: Any, send_mail: Any, slug: str) -> dict[str, Any]:
    """One order (a PDF and a PNG) through Postfix; returns its row once STORED."""
    msg = order_email(
        to=address(slug),
        attachments=[("PO-1616.pdf", "application/pdf", PDF), ("photo.png", "image/png", PNG)],
    )
    send_mail(stack, msg, [address(slug)])
    return wait_status(db, msg["Message-ID"], ("STORED",), slug=slug)


def extract(stack: Any, message: dict[str, Any]) -> None:
    """Run the attachment job in this process on exactly this message (it ends PARSED)."""
    outcome = attachments.run(context.JobContext(stack.settings), message["id"], "lifecycle")
    assert outcome.status == "parsed", outcome


def parsed(stack: Any, db: Any, send_mail: Any, slug: str) -> dict[str, Any]:
    message = deliver(stack, db, send_mail, slug)
    extract(stack, message)
    row = db.execute(
        "SELECT id::text AS id, org_id::text AS org_id, status, raw_storage_key, size_bytes"
        " FROM inbound_message WHERE id = %s",
        (message["id"],),
    ).fetchone()
    assert row["status"] == "PARSED", row
    return dict(row)


def backdate(stack: Any, message_id: str, days: int) -> None:
    """Make a message look received `days` ago (the schema owner; services never do this)."""
    with owner_conn(stack) as conn:
        conn.execute(
            "UPDATE inbound_message SET received_at = now() - make_interval(days => %s)"
            " WHERE id = %s",
            (days, message_id),
        )


def keys_of(db: Any, message: dict[str, Any]) -> list[str]:
    rows = db.execute(
        "SELECT storage_key FROM document WHERE inbound_message_id = %s", (message["id"],)
    ).fetchall()
    return [row["storage_key"] for row in rows] + [message["raw_storage_key"]]


def present(s3: Any, bucket: str, key: str) -> bool:
    return objects.head(s3, bucket, key) is not None
