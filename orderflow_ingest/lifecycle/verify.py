"""Check that every object the database names is in the bucket, with the recorded size and
sha256 (`verify-storage`): run after a restore, or whenever the bucket is in doubt.

A database restored from a dump older than the bucket copy is fine (extra objects are not
looked at); one newer than the bucket copy shows here as missing objects, each named.
A message that is being purged (purge_started_at set) may have lost its objects already:
that is reported as `purging`, not as a problem (the next purge run finishes it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orderflow_ingest.db import Conn
from orderflow_ingest.lifecycle import objects

CHUNK = 1024 * 1024
# Every stored object the database names: raw messages and documents.
_ROWS = """
SELECT 'message' AS kind, m.id::text AS id, m.org_id::text AS org_id, m.raw_storage_key AS key,
       m.sha256, m.size_bytes, m.purge_started_at IS NOT NULL AS purging
FROM inbound_message m
WHERE m.raw_storage_key IS NOT NULL AND (%(org_id)s::uuid IS NULL OR m.org_id = %(org_id)s::uuid)
UNION ALL
SELECT 'document', d.id::text, d.org_id::text, d.storage_key, d.sha256, d.size_bytes,
       m.purge_started_at IS NOT NULL
FROM document d JOIN inbound_message m ON m.id = d.inbound_message_id
WHERE %(org_id)s::uuid IS NULL OR d.org_id = %(org_id)s::uuid
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Finding:
    """One row whose object is not as recorded: missing, size, sha256 (or purging)."""

    problem: str
    kind: str
    row_id: str
    key: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "problem": self.problem,
            "kind": self.kind,
            "id": self.row_id,
            "key": self.key,
            "detail": self.detail,
        }


@dataclass
class Report:
    checked: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.problem != "purging"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "bytes": self.bytes,
            "problems": len(self.problems),
            "findings": [finding.as_dict() for finding in self.findings],
        }


def _rows(conn: Conn, org_id: str | None) -> Iterator[dict[str, Any]]:
    """Rows streamed through a server-side cursor: memory stays flat for any table size."""
    with conn.transaction(), conn.cursor(name="verify_storage") as cursor:
        cursor.execute(_ROWS, {"org_id": org_id})
        while rows := cursor.fetchmany(500):
            yield from rows


def _sha256(client: Any, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def check_row(client: Any, bucket: str, row: dict[str, Any], full: bool) -> Finding | None:
    """None when the row's object is there as recorded; otherwise what is wrong with it."""
    kind, row_id, key = row["kind"], row["id"], row["key"]
    found = objects.head(client, bucket, key)
    if found is None:
        return Finding("purging" if row["purging"] else "missing", kind, row_id, key)
    size = found.get("ContentLength")
    if row["size_bytes"] is not None and size != row["size_bytes"]:
        return Finding("size", kind, row_id, key, f"recorded {row['size_bytes']}, found {size}")
    if full and row["sha256"]:
        actual = _sha256(client, bucket, key)
        if actual != row["sha256"]:
            return Finding("sha256", kind, row_id, key, f"recorded {row['sha256']}, found {actual}")
    return None


def verify(
    conn: Conn, client: Any, bucket: str, org_id: str | None = None, full: bool = True
) -> Report:
    """Check every raw message and document object (of one org, or all).

    full=False checks presence and size only (one HEAD per object); full reads every object
    and compares its sha256, which costs the whole bucket's bytes in transfer.
    """
    report = Report()
    for row in _rows(conn, org_id):
        report.checked += 1
        finding = check_row(client, bucket, row, full)
        if finding is None:
            report.bytes += int(row["size_bytes"] or 0)
        else:
            report.findings.append(finding)
    return report
