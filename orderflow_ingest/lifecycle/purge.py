"""Purge expired messages: their document objects, their raw object, then their rows.

Only PARSED and FAILED messages are ever purged (RECEIVED and STORED ones are still being
delivered or extracted). A message is expired when it was received longer ago than its org's
retention (org.retention_days, else ORDERFLOW_RETENTION_DAYS; 0 = forever), or than an
explicit --older-than, or when its org was deleted.

Order, so that a crash anywhere never leaves a row pointing at a deleted object for good:
  1. mark the message (purge_started_at, committed): from then on `reprocess` leaves it alone;
  2. delete its objects (deleting one already gone succeeds);
  3. delete its rows through orderflow_purge_message(), which records message.purged in the
     same transaction and refuses a message that is not marked and terminal.
A run cut short after 1 or 2 leaves a marked row; every run finishes marked rows first,
whatever their age. Two hosts purging at once do the same deletions twice, harmlessly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from orderflow_ingest.db import Conn
from orderflow_ingest.lifecycle import objects
from orderflow_ingest.logs import log_event

BATCH = 200

# The expired, terminal messages of the selection; marked ones first (a previous run's rest).
# %(older_than)s NULL: each org's own retention; %(everything)s: every terminal message.
_SELECTION = """
  FROM inbound_message m JOIN org o ON o.id = m.org_id
  WHERE m.status IN ('PARSED', 'FAILED')
    AND (%(org_id)s::uuid IS NULL OR m.org_id = %(org_id)s::uuid)
    AND NOT (m.id = ANY(%(skip)s::uuid[]))
    AND (
      m.purge_started_at IS NOT NULL
      OR o.deleted_at IS NOT NULL
      OR %(everything)s
      OR (%(older_than)s::interval IS NOT NULL
          AND m.received_at < now() - %(older_than)s::interval)
      OR (%(older_than)s::interval IS NULL
          AND coalesce(o.retention_days, %(default_days)s) > 0
          AND m.received_at < now()
              - make_interval(days => coalesce(o.retention_days, %(default_days)s)))
    )
"""

_PLAN = f"""
SELECT count(*) AS messages,
       coalesce(sum(d.n), 0) AS documents,
       count(m.raw_storage_key) + coalesce(sum(d.n), 0) AS objects,
       coalesce(sum(m.size_bytes), 0) + coalesce(sum(d.bytes), 0) AS bytes
FROM (SELECT m.id, m.raw_storage_key, m.size_bytes {_SELECTION}) m
LEFT JOIN LATERAL (
  SELECT count(*) AS n, sum(size_bytes) AS bytes FROM document WHERE inbound_message_id = m.id
) d ON true
"""

_BATCH = f"""
SELECT m.id::text AS id {_SELECTION}
ORDER BY m.purge_started_at NULLS LAST, m.received_at
LIMIT %(limit)s
"""

_MARK = """
UPDATE inbound_message SET purge_started_at = coalesce(purge_started_at, now())
WHERE id = ANY(%s::uuid[]) AND status IN ('PARSED', 'FAILED')
RETURNING id::text AS id, raw_storage_key
"""

_DOCUMENT_KEYS = "SELECT storage_key FROM document WHERE inbound_message_id = %s ORDER BY part_path"


@dataclass(frozen=True)
class Selection:
    """Which messages expire: one org or all, by retention, by age, or all terminal ones."""

    org_id: str | None = None
    older_than: timedelta | None = None
    everything: bool = False
    default_days: int = 0

    def params(self, skip: list[str]) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "older_than": self.older_than,
            "everything": self.everything,
            "default_days": self.default_days,
            "skip": skip,
        }


@dataclass
class Totals:
    """What a purge removed (or, for a dry run, would remove)."""

    messages: int = 0
    documents: int = 0
    objects: int = 0
    bytes: int = 0
    # Messages whose objects could not be deleted this run: still marked, retried next run.
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "documents": self.documents,
            "objects": self.objects,
            "bytes": self.bytes,
            "failed": list(self.failed),
        }


def plan(conn: Conn, selection: Selection) -> Totals:
    """What `purge` would delete now (the dry run): counts and bytes, nothing changed."""
    row = conn.execute(_PLAN, selection.params([])).fetchone()
    conn.rollback()
    assert row is not None
    return Totals(
        int(row["messages"]), int(row["documents"]), int(row["objects"]), int(row["bytes"])
    )


def mark(conn: Conn, message_ids: list[str]) -> list[dict[str, Any]]:
    """Step 1: mark terminal messages as being purged and commit; returns those marked."""
    rows = conn.execute(_MARK, (message_ids,)).fetchall()
    conn.commit()
    return rows


def delete_objects(conn: Conn, s3: Any, bucket: str, message: dict[str, Any]) -> int:
    """Step 2: delete a marked message's document objects, then its raw object."""
    keys = [row["storage_key"] for row in conn.execute(_DOCUMENT_KEYS, (message["id"],))]
    conn.rollback()
    if message.get("raw_storage_key"):
        keys.append(message["raw_storage_key"])
    for key in keys:
        objects.delete(s3, bucket, key)
    return len(keys)


def delete_rows(conn: Conn, message_id: str, reason: str) -> dict[str, Any] | None:
    """Step 3: delete the rows and record message.purged (one transaction, committed).

    Returns the event's data, or None when the message was not marked or already purged.
    """
    row = conn.execute(
        "SELECT orderflow_purge_message(%s, %s) AS purged", (message_id, reason)
    ).fetchone()
    if not (row and row["purged"]):
        conn.commit()
        return None
    event = conn.execute(
        "SELECT data FROM event WHERE type = 'message.purged' AND inbound_message_id = %s"
        " AND txid = pg_current_xact_id() ORDER BY id DESC LIMIT 1",
        (message_id,),
    ).fetchone()
    conn.commit()
    return dict(event["data"]) if event else {}


def _batches(conn: Conn, selection: Selection, skip: list[str]) -> Iterator[list[str]]:
    while True:
        rows = conn.execute(_BATCH, {**selection.params(skip), "limit": BATCH}).fetchall()
        conn.rollback()
        if not rows:
            return
        yield [row["id"] for row in rows]


def purge(conn: Conn, s3: Any, bucket: str, selection: Selection, reason: str) -> Totals:
    """Purge every message of the selection, batch by batch; returns what went.

    An S3 error on one message leaves it marked and moves on (counted in `failed`, retried
    next run); a database error stops the run (the next run finishes what this one marked).
    """
    totals = Totals()
    for ids in _batches(conn, selection, totals.failed):
        for message in mark(conn, ids):
            try:
                deleted_objects = delete_objects(conn, s3, bucket, message)
            except (ClientError, BotoCoreError) as error:
                totals.failed.append(message["id"])
                log_event(
                    "purge.objects_failed",
                    logging.WARNING,
                    inbound_message_id=message["id"],
                    error=type(error).__name__,
                )
                continue
            data = delete_rows(conn, message["id"], reason)
            if data is None:
                continue
            totals.messages += 1
            totals.documents += int(data.get("documents", 0))
            totals.objects += deleted_objects
            totals.bytes += int(data.get("bytes", 0))
    return totals
