"""Delete an org: disable it, purge all its messages with their objects, tombstone it.

The org row stays as a tombstone (deleted_at set, disabled for good): the event log, webhook
deliveries and API keys name its id, and its slug is never handed to another tenant, so mail
still sent to the old address is refused rather than delivered to someone else. The event log
keeps `org.deleted` (ids and counts only) until the event retention prunes it.

Mail in flight: the org is disabled first (committed), so from then on every MX refuses new
mail for it at RCPT. Messages already accepted but not yet PARSED or FAILED (RECEIVED, STORED:
being delivered or extracted) would land in the bucket after the purge; deletion stops
there unless forced. Forced, the org is tombstoned anyway and the purge timer removes those
messages once they end (a deleted org's terminal messages are always expired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orderflow_ingest import events, orgs
from orderflow_ingest.db import Conn
from orderflow_ingest.lifecycle import purge

_IN_FLIGHT = (
    "SELECT count(*) AS n FROM inbound_message"
    " WHERE org_id = %s AND status IN ('RECEIVED', 'STORED')"
)


class InFlight(Exception):
    """Mail of the org is still being delivered or extracted; `count` messages."""

    def __init__(self, count: int):
        super().__init__(f"{count} messages are still being delivered or extracted")
        self.count = count


@dataclass
class DeletionReport:
    org: dict[str, Any]
    totals: purge.Totals
    in_flight: int
    deleted: bool


def in_flight(conn: Conn, org_id: str) -> int:
    row = conn.execute(_IN_FLIGHT, (org_id,)).fetchone()
    conn.rollback()
    return int(row["n"]) if row else 0


def dry_run(conn: Conn, org: dict[str, Any]) -> DeletionReport:
    """What deletion would remove now (in-flight messages are not part of it)."""
    totals = purge.plan(conn, purge.Selection(org_id=org["id"], everything=True))
    return DeletionReport(org, totals, in_flight(conn, org["id"]), deleted=False)


def _retire_access(conn: Conn, org_id: str) -> None:
    """Keys naming only this org are revoked, others lose it; its webhook endpoints go."""
    conn.execute(
        "UPDATE api_key SET revoked_at = coalesce(revoked_at, now())"
        " WHERE org_ids = ARRAY[%s::uuid]",
        (org_id,),
    )
    conn.execute(
        "UPDATE api_key SET org_ids = array_remove(org_ids, %s::uuid)"
        " WHERE %s::uuid = ANY(org_ids) AND cardinality(org_ids) > 1",
        (org_id, org_id),
    )
    conn.execute(
        "UPDATE webhook_endpoint SET deleted_at = now(), enabled = false,"
        " disabled_reason = 'org deleted', disabled_at = now(), updated_at = now()"
        " WHERE org_id = %s AND deleted_at IS NULL",
        (org_id,),
    )
    conn.execute(
        "UPDATE webhook_delivery SET status = 'failed', last_error = 'org deleted',"
        " next_attempt_at = NULL, updated_at = now() WHERE org_id = %s AND status = 'pending'",
        (org_id,),
    )


def delete(conn: Conn, s3: Any, bucket: str, org: dict[str, Any], force: bool) -> DeletionReport:
    """Disable, purge everything terminal, then tombstone (raises InFlight unless forced)."""
    org_id = org["id"]
    orgs.set_org_status(conn, org["slug"], "disabled")
    conn.commit()
    waiting = in_flight(conn, org_id)
    if waiting and not force:
        raise InFlight(waiting)
    selection = purge.Selection(org_id=org_id, everything=True)
    totals = purge.purge(conn, s3, bucket, selection, reason="org deleted")
    if totals.failed:
        return DeletionReport(org, totals, waiting, deleted=False)
    _retire_access(conn, org_id)
    orgs.tombstone(conn, org_id)
    events.record(
        conn,
        "org.deleted",
        org_id=org_id,
        data={
            "messages": totals.messages,
            "documents": totals.documents,
            "objects": totals.objects,
            "bytes": totals.bytes,
            "in_flight": waiting,
            "forced": force,
        },
    )
    conn.commit()
    return DeletionReport(org, totals, waiting, deleted=True)
