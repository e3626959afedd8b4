"""The platform-admin view's queries, in one place: every org (deleted tombstones left out)
with what staff look at first. Each count is an index range per org: messages of the last
24 h walk (org_id, received_at), FAILED counts (org_id, status), conflicts the partial index
on conflict_of (a conflict is a later message with the same Message-ID and other content)."""

from __future__ import annotations

from typing import Any

from orderflow_ingest.db import Conn

ORG_OVERVIEW = """
SELECT o.id::text AS org_id, o.slug::text AS slug, o.name, o.status,
  (SELECT count(*) FROM inbound_message m
    WHERE m.org_id = o.id AND m.received_at > now() - interval '24 hours') AS last_24h,
  (SELECT count(*) FROM inbound_message m
    WHERE m.org_id = o.id AND m.status = 'FAILED') AS failed,
  (SELECT count(*) FROM inbound_message m
    WHERE m.conflict_of IS NOT NULL AND m.org_id = o.id) AS conflicts,
  (SELECT max(m.received_at) FROM inbound_message m WHERE m.org_id = o.id) AS newest
FROM org o
WHERE o.deleted_at IS NULL
ORDER BY o.slug
"""


def org_overview(conn: Conn) -> list[dict[str, Any]]:
    """Every org: slug, name, status, messages of the last 24 h, FAILED, conflicts, newest."""
    return conn.execute(ORG_OVERVIEW).fetchall()
