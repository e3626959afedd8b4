"""Org queries: the tenants that own plus-addresses."""

from __future__ import annotations

from typing import Any

from orderflow_ingest.db import Conn

# A deleted org (a tombstone, `org delete`) shows as status "deleted"; its row stays disabled.
ORG_COLUMNS = (
    "id::text AS id, slug::text AS slug, name,"
    " CASE WHEN deleted_at IS NULL THEN status ELSE 'deleted' END AS status, created_at"
)


def org_by_slug(conn: Conn, slug: str) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {ORG_COLUMNS} FROM org WHERE slug = %s", (slug,)).fetchone()


def add_org(conn: Conn, slug: str, name: str) -> dict[str, Any]:
    row = conn.execute(
        f"INSERT INTO org (slug, name) VALUES (%s, %s) RETURNING {ORG_COLUMNS}", (slug, name)
    ).fetchone()
    assert row is not None
    return row


def set_org_status(conn: Conn, slug: str, status: str) -> dict[str, Any] | None:
    """Enable or disable an org; a deleted org (a tombstone) is never enabled again."""
    return conn.execute(
        f"UPDATE org SET status = %s, updated_at = now()"
        f" WHERE slug = %s AND deleted_at IS NULL RETURNING {ORG_COLUMNS}",
        (status, slug),
    ).fetchone()


def org_lifecycle(conn: Conn, slug: str) -> dict[str, Any] | None:
    """An org with its retention and tombstone (`org retention`, `org delete`, `purge --org`)."""
    return conn.execute(
        f"SELECT {ORG_COLUMNS}, retention_days, deleted_at FROM org WHERE slug = %s", (slug,)
    ).fetchone()


def set_retention(conn: Conn, org_id: str, days: int | None) -> None:
    """Days this org's messages are kept (None: the global default, 0: forever)."""
    conn.execute(
        "UPDATE org SET retention_days = %s, updated_at = now() WHERE id = %s", (days, org_id)
    )


def tombstone(conn: Conn, org_id: str) -> None:
    """Mark an org deleted: disabled for good, its id kept for the events that name it."""
    conn.execute(
        "UPDATE org SET status = 'disabled', deleted_at = coalesce(deleted_at, now()),"
        " updated_at = now() WHERE id = %s",
        (org_id,),
    )


def list_orgs(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT {ORG_COLUMNS} FROM org ORDER BY slug").fetchall()


def org_summary(conn: Conn, slug: str) -> dict[str, Any] | None:
    """An org with its message counts per status and its last received time (`org show`)."""
    return conn.execute(
        f"""
        SELECT {ORG_COLUMNS},
          (SELECT count(*) FROM inbound_message m WHERE m.org_id = org.id) AS messages,
          (SELECT coalesce(jsonb_object_agg(status, n), '{{}}'::jsonb) FROM
             (SELECT status, count(*) AS n FROM inbound_message m
               WHERE m.org_id = org.id GROUP BY status) s) AS by_status,
          (SELECT count(*) FROM document d WHERE d.org_id = org.id) AS documents,
          (SELECT max(received_at) FROM inbound_message m WHERE m.org_id = org.id)
            AS last_received_at
        FROM org WHERE slug = %s
        """,
        (slug,),
    ).fetchone()
