"""Migration 004 carries the status history a database already has over into the event log,
in order, and leaves inbound_message_event as a view with the same rows. Run as the schema
owner in a scratch schema inside one transaction that is rolled back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from orderflow_ingest.db import migrations_dir

pytestmark = pytest.mark.stack


@pytest.fixture
def scratch(settings: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(settings.migrate_url, row_factory=dict_row) as conn:
        conn.execute("CREATE SCHEMA events_migration_test")
        conn.execute("SET LOCAL search_path TO events_migration_test, public")
        try:
            yield conn
        finally:
            conn.rollback()


def _apply(conn: Any, prefix: str) -> None:
    (path,) = sorted(migrations_dir().glob(f"{prefix}_*.sql"))
    conn.execute(path.read_text(encoding="utf-8"))


def test_existing_history_becomes_events_and_the_view_shows_it(scratch: Any) -> None:
    for prefix in ("001", "002", "003"):
        _apply(scratch, prefix)
    org = scratch.execute(
        "INSERT INTO org (slug, name) VALUES ('mig', 'mig') RETURNING id"
    ).fetchone()["id"]
    message = scratch.execute(
        "INSERT INTO inbound_message (org_id, source, received_at, status, trace_id)"
        " VALUES (%s, 'EMAIL', now(), 'RECEIVED', 'trace-mig') RETURNING id",
        (org,),
    ).fetchone()["id"]
    for status, extra in (
        ("STORED", ", raw_storage_key = 'raw/k'"),
        ("FAILED", ', error_json = \'{"reason": "x"}\''),
        ("STORED", ""),  # the owner may reopen (what orderflow_reprocess does)
        ("PARSED", ", error_json = NULL"),
    ):
        scratch.execute(
            f"UPDATE inbound_message SET status = %s{extra} WHERE id = %s", (status, message)
        )
    before = scratch.execute(
        "SELECT status, error_json, at FROM inbound_message_event ORDER BY id"
    ).fetchall()
    assert len(before) == 5

    _apply(scratch, "004")

    events = scratch.execute(
        "SELECT type, org_id, trace_id, data, occurred_at FROM event"
        " WHERE inbound_message_id = %s ORDER BY txid, id",
        (message,),
    ).fetchall()
    assert [e["type"] for e in events] == [
        "message.received",
        "message.stored",
        "message.failed",
        "message.reprocessed",
        "message.parsed",
    ]
    assert {e["org_id"] for e in events} == {org}
    assert {e["trace_id"] for e in events} == {"trace-mig"}
    assert [e["occurred_at"] for e in events] == [row["at"] for row in before]
    after = scratch.execute(
        "SELECT status, error_json, at FROM inbound_message_event ORDER BY at, id"
    ).fetchall()
    assert after == before
    kind = scratch.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'events_migration_test' AND c.relname = 'inbound_message_event'"
    ).fetchone()["relkind"]
    assert kind == "v"
