"""The event log against the stack's PostgreSQL: events written in the same transaction as the
change (triggers and `record`), status history derived from them, feed filters, pruning."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from orderflow_ingest import documents, events, messages
from orderflow_ingest.ops import queries

pytestmark = pytest.mark.stack


@pytest.fixture
def conn(settings: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The runtime role, as the services connect (transactions, not autocommit)."""
    with psycopg.connect(settings.database_url, row_factory=dict_row) as connection:
        yield connection


# Orgs of these tests only: the rows they write directly (FAILED ones with no raw in S3, say)
# must not show up in other tests' selections of acme's messages.
ORGS = {"acme": "events-log-a", "globex": "events-log-b"}


def org_id(conn: Any, slug: str) -> str:
    own = ORGS[slug]
    conn.execute(
        "INSERT INTO org (slug, name) VALUES (%s, %s) ON CONFLICT (slug) DO NOTHING", (own, own)
    )
    row = conn.execute("SELECT id::text AS id FROM org WHERE slug = %s", (own,)).fetchone()
    conn.commit()
    return str(row["id"])


def insert_message(conn: Any, org: str) -> dict[str, Any]:
    """A RECEIVED row written directly (the delivery path's own tests cover its gate)."""
    row = conn.execute(
        "INSERT INTO inbound_message (org_id, source, source_message_id, received_at, status,"
        " trace_id) VALUES (%s, 'EMAIL', %s, now(), 'RECEIVED', %s)"
        " RETURNING id::text AS id, trace_id",
        (org, f"<{uuid.uuid4()}@events.test>", uuid.uuid4().hex),
    ).fetchone()
    assert row is not None
    return dict(row)


def events_of(conn: Any, message_id: str) -> list[dict[str, Any]]:
    rows = events.for_message(conn, message_id)
    conn.commit()
    return rows


def test_status_changes_are_events_written_by_the_database(conn: Any) -> None:
    acme = org_id(conn, "acme")
    row = insert_message(conn, acme)
    conn.commit()
    assert messages.mark_stored(conn, row["id"], "raw/key")
    conn.commit()
    messages.mark_failed(conn, row["id"], {"stage": "extract", "reason": "broken"})
    conn.commit()
    assert messages.reopen_for_reprocess(conn, row["id"])
    conn.commit()
    messages.mark_parsed(conn, row["id"])
    conn.commit()

    found = events_of(conn, row["id"])
    assert [e["type"] for e in found] == [
        "message.received",
        "message.stored",
        "message.failed",
        "message.reprocessed",
        "message.parsed",
    ]
    assert {e["org_id"] for e in found} == {acme}
    assert {e["trace_id"] for e in found} == {row["trace_id"]}
    assert found[2]["data"] == {
        "status": "FAILED",
        "previous_status": "STORED",
        "error": {"stage": "extract", "reason": "broken"},
    }
    assert found[3]["data"]["previous_status"] == "FAILED"


def test_a_rolled_back_change_leaves_no_event(conn: Any) -> None:
    acme = org_id(conn, "acme")
    row = insert_message(conn, acme)
    event_id = events.record(conn, "message.duplicate", org_id=acme, inbound_message_id=row["id"])
    conn.rollback()
    assert (
        conn.execute("SELECT count(*) AS n FROM event WHERE id = %s", (event_id,)).fetchone()["n"]
        == 0
    )
    assert events_of(conn, row["id"]) == []


def test_status_history_is_derived_from_the_event_log(conn: Any) -> None:
    acme = org_id(conn, "acme")
    row = insert_message(conn, acme)
    conn.commit()
    messages.mark_failed(conn, row["id"], {"stage": "deliver", "reason": "malformed"}, "raw/x")
    events.record(conn, "message.duplicate", org_id=acme, inbound_message_id=row["id"])
    conn.commit()
    history = queries.history(conn, row["id"])
    conn.commit()
    assert [(h["status"], h["error_json"]) for h in history] == [
        ("RECEIVED", None),
        ("FAILED", {"stage": "deliver", "reason": "malformed"}),
    ]


def test_a_new_document_is_an_event_and_its_update_is_not(conn: Any) -> None:
    acme = org_id(conn, "acme")
    row = insert_message(conn, acme)
    fields: dict[str, Any] = {
        "org_id": acme,
        "inbound_message_id": row["id"],
        "part_path": "2",
        "file_name": "PO.pdf",
        "mime_type": "application/pdf",
        "size_bytes": 5,
        "sha256": "1" * 64,
        "storage_key": "doc/key",
        "status": "STORED",
        "decision": {"reason": "attachment"},
    }
    document = documents.upsert_document(conn, **fields)
    conn.commit()
    documents.upsert_document(conn, **{**fields, "size_bytes": 6})
    conn.commit()
    created = [e for e in events_of(conn, row["id"]) if e["type"] == "document.created"]
    assert len(created) == 1
    assert created[0]["document_id"] == document["id"]
    assert created[0]["trace_id"] == row["trace_id"]
    assert created[0]["data"]["file_name"] == "PO.pdf"
    assert created[0]["data"]["mime_type"] == "application/pdf"


def test_feed_filters_by_org_and_type_and_pages_with_the_cursor(conn: Any) -> None:
    acme, globex = org_id(conn, "acme"), org_id(conn, "globex")
    _, start = events.read(conn, None, org_ids=None, types=None, limit=1000)
    while True:  # move to the end of the feed
        page, cursor = events.read(conn, start, org_ids=None, types=None, limit=1000)
        if not page:
            break
        start = cursor
    conn.commit()
    marker = uuid.uuid4().hex
    for org in (acme, globex, acme):
        events.record(conn, "test.feed", org_id=org, trace_id=marker)
    events.record(conn, "test.other", org_id=acme, trace_id=marker)
    conn.commit()

    only_acme, _ = events.read(conn, start, org_ids=[acme], types=["test.feed"], limit=100)
    assert [(e["org_id"], e["type"]) for e in only_acme] == [(acme, "test.feed")] * 2
    none, cursor = events.read(conn, start, org_ids=[], types=None, limit=100)
    assert none == [] and cursor == start

    seen: list[str] = []
    cursor = start
    while True:
        page, cursor = events.read(conn, cursor, org_ids=[acme, globex], types=None, limit=1)
        if not page:
            break
        seen.extend(e["type"] for e in page if e["trace_id"] == marker)
    assert seen == ["test.feed", "test.feed", "test.feed", "test.other"]


def test_an_open_transaction_holds_the_feed_back_until_it_ends(settings: Any, conn: Any) -> None:
    acme = org_id(conn, "acme")
    with psycopg.connect(settings.database_url, row_factory=dict_row) as slow:
        first = events.record(slow, "test.slow", org_id=acme)  # older txid, still open
        later = events.record(conn, "test.fast", org_id=acme)
        conn.commit()
        page, _ = events.read(
            conn, None, org_ids=[acme], types=["test.slow", "test.fast"], limit=1000
        )
        conn.commit()
        assert later not in [e["id"] for e in page]
        slow.commit()
    page, _ = events.read(conn, None, org_ids=[acme], types=["test.slow", "test.fast"], limit=1000)
    ids = [e["id"] for e in page]
    assert ids.index(first) < ids.index(later)


def test_prune_deletes_events_older_than_the_retention_only(conn: Any) -> None:
    acme = org_id(conn, "acme")
    old = conn.execute(
        "INSERT INTO event (type, org_id, occurred_at) VALUES ('test.old', %s, %s) RETURNING id",
        (acme, datetime.now(UTC) - timedelta(days=40)),
    ).fetchone()["id"]
    recent = events.record(conn, "test.recent", org_id=acme)
    conn.commit()
    assert events.prune(conn, timedelta(days=30), batch=1) >= 1
    left = {
        row["id"]
        for row in conn.execute(
            "SELECT id FROM event WHERE id = ANY(%s)", ([old, recent],)
        ).fetchall()
    }
    conn.commit()
    assert left == {recent}


def test_prune_refuses_a_retention_under_one_day(conn: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        events.prune(conn, timedelta(hours=1))
    conn.rollback()


def test_the_runtime_role_cannot_delete_events(conn: Any) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM event WHERE type = 'test.recent'")
    conn.rollback()
