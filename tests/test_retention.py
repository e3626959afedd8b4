"""Retention (issue 16, "Data lifecycle"): `org retention`, `purge` and its crash safety, and
the database function that is the runtime role's only way to delete a message's rows.

Real mail goes through the session stack's Postfix; each test uses orgs of its own, so its
purges never select another test's rows.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from lifecycle_support import backdate, deliver, keys_of, new_org, parsed, present
from ops_support import cli, cli_json
from psycopg.rows import dict_row

from orderflow_ingest.lifecycle import purge, verify

pytestmark = pytest.mark.stack


def _exists(db: Any, table: str, column: str, message_id: str) -> bool:
    row = db.execute(f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", (message_id,))
    return bool(row.fetchone()["n"])


def _events(db: Any, message_id: str, kind: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT org_id::text AS org_id, document_id, data FROM event"
        " WHERE inbound_message_id = %s AND type = %s",
        (message_id, kind),
    ).fetchall()


def test_purge_deletes_expired_terminal_messages_with_their_objects_and_records_an_event(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    bucket = stack.settings.s3_bucket
    org = new_org(stack, "ret")
    code, shown = cli_json(stack, "org", "retention", org["slug"], "7")
    assert code == 0 and shown["retention_days"] == 7 and shown["effective_days"] == 7
    old = parsed(stack, db, send_mail, org["slug"])
    fresh = parsed(stack, db, send_mail, org["slug"])
    in_flight = deliver(stack, db, send_mail, org["slug"])  # STORED: never purged
    for message in (old, in_flight):
        backdate(stack, message["id"], 10)
    old_keys = keys_of(db, old)
    assert len(old_keys) == 3 and all(present(s3, bucket, key) for key in old_keys)
    document_bytes = db.execute(
        "SELECT sum(size_bytes) AS n FROM document WHERE inbound_message_id = %s", (old["id"],)
    ).fetchone()["n"]

    code, planned = cli_json(stack, "purge", "--org", org["slug"], "--dry-run")
    assert code == 0
    assert planned == {
        "messages": 1,
        "documents": 2,
        "objects": 3,
        "bytes": old["size_bytes"] + document_bytes,
        "failed": [],
    }
    assert all(present(s3, bucket, key) for key in old_keys), "a dry run deleted objects"

    code, done = cli_json(stack, "purge", "--org", org["slug"])
    assert code == 0 and done["messages"] == 1 and done["objects"] == 3
    for table, column in (
        ("inbound_message", "id"),
        ("document", "inbound_message_id"),
        ("inbound_message_part", "inbound_message_id"),
    ):
        assert not _exists(db, table, column, old["id"]), table
    assert not any(present(s3, bucket, key) for key in old_keys)
    (event,) = _events(db, old["id"], "message.purged")
    assert event["org_id"] == org["id"]
    assert event["data"]["documents"] == 2 and event["data"]["reason"] == "retention"
    assert set(event["data"]) == {"reason", "status", "received_at", "documents", "bytes"}
    # The fresh message and the STORED one are untouched, objects and all.
    for kept in (fresh, in_flight):
        assert _exists(db, "inbound_message", "id", kept["id"])
    assert present(s3, bucket, in_flight["raw_storage_key"])
    assert all(present(s3, bucket, key) for key in keys_of(db, fresh))
    # Re-running finds nothing more.
    code, again = cli_json(stack, "purge", "--org", org["slug"])
    assert code == 0 and again["messages"] == 0


def test_org_retention_overrides_the_global_default_and_zero_keeps_forever(
    stack: Any, db: Any, send_mail: Any
) -> None:
    defaulted = new_org(stack, "ret-default")
    forever = new_org(stack, "ret-forever")
    assert cli(stack, "org", "retention", forever["slug"], "0").returncode == 0
    messages = {}
    for org in (defaulted, forever):
        messages[org["slug"]] = parsed(stack, db, send_mail, org["slug"])
        backdate(stack, messages[org["slug"]]["id"], 40)
    env = {"ORDERFLOW_RETENTION_DAYS": "30"}
    code, shown = cli_json(stack, "org", "retention", defaulted["slug"], env=env)
    assert code == 0 and shown == {
        "slug": defaulted["slug"],
        "retention_days": None,
        "effective_days": 30,
    }
    for org, expected in ((defaulted, 1), (forever, 0)):
        code, planned = cli_json(stack, "purge", "--org", org["slug"], "--dry-run", env=env)
        assert code == 0 and planned["messages"] == expected, org["slug"]
    # Without the setting the default is 0: nothing expires by age.
    code, planned = cli_json(stack, "purge", "--org", defaulted["slug"], "--dry-run")
    assert code == 0 and planned["messages"] == 0
    # --older-than overrides every retention, but refuses less than an hour.
    code, planned = cli_json(stack, "purge", "--org", forever["slug"], "--older-than", "35d")
    assert code == 0 and planned["messages"] == 1
    assert cli(stack, "purge", "--older-than", "5m").returncode == 2
    changes = db.execute(
        "SELECT data FROM event WHERE type = 'org.retention_changed' AND org_id = %s",
        (forever["id"],),
    ).fetchall()
    assert [row["data"] for row in changes] == [{"retention_days": 0, "previous": None}]
    assert cli(stack, "org", "retention", forever["slug"], "-3").returncode != 0


def test_a_purge_cut_short_after_deleting_objects_is_finished_by_the_next_run(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    """The state a crash between the object deletions and the row deletion leaves: the row is
    marked, its objects are gone. Nothing reopens it, verify-storage says `purging`, and the
    next run finishes it whatever its age."""
    bucket = stack.settings.s3_bucket
    org = new_org(stack, "ret-crash")
    message = parsed(stack, db, send_mail, org["slug"])
    keys = keys_of(db, message)
    with psycopg.connect(stack.settings.database_url, row_factory=dict_row) as conn:
        (marked,) = purge.mark(conn, [message["id"]])
        assert purge.delete_objects(conn, s3, bucket, marked) == 3
    assert not any(present(s3, bucket, key) for key in keys)
    reopened = db.execute(
        "SELECT orderflow_reprocess(%s, 'operator') AS ok", (message["id"],)
    ).fetchone()
    assert reopened["ok"] is False
    with psycopg.connect(stack.settings.database_url, row_factory=dict_row) as conn:
        report = verify.verify(conn, s3, bucket, org_id=org["id"])
    assert report.checked == 3 and not report.problems
    assert {finding.problem for finding in report.findings} == {"purging"}

    # Received just now and the org keeps forever: only the mark selects it.
    code, done = cli_json(stack, "purge", "--org", org["slug"])
    assert code == 0 and done["messages"] == 1
    assert not _exists(db, "inbound_message", "id", message["id"])
    assert len(_events(db, message["id"], "message.purged")) == 1


def test_runtime_role_deletes_rows_only_through_the_purge_function_and_only_when_marked(
    stack: Any, db: Any, send_mail: Any
) -> None:
    org = new_org(stack, "ret-rights")
    stored = deliver(stack, db, send_mail, org["slug"])
    done = parsed(stack, db, send_mail, org["slug"])
    for table, column in (
        ("inbound_message", "id"),
        ("document", "inbound_message_id"),
        ("inbound_message_part", "inbound_message_id"),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(f"DELETE FROM {table} WHERE {column} = %s", (done["id"],))
    # Not marked: refused. Marked by hand while STORED (still being extracted): refused.
    purged = "SELECT orderflow_purge_message(%s, 'test') AS ok"
    assert db.execute(purged, (done["id"],)).fetchone()["ok"] is False
    db.execute("UPDATE inbound_message SET purge_started_at = now() WHERE id = %s", (stored["id"],))
    assert db.execute(purged, (stored["id"],)).fetchone()["ok"] is False
    assert _exists(db, "inbound_message", "id", stored["id"])
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT orderflow_purge_message(%s, ' ')", (done["id"],))
    db.execute("UPDATE inbound_message SET purge_started_at = now() WHERE id = %s", (done["id"],))
    assert db.execute(purged, (done["id"],)).fetchone()["ok"] is True
    assert db.execute(purged, (done["id"],)).fetchone()["ok"] is False  # already gone
    assert not _exists(db, "document", "inbound_message_id", done["id"])
    # The function is not anyone's: PUBLIC has no EXECUTE.
    public = db.execute(
        "SELECT has_function_privilege('public', 'orderflow_purge_message(uuid, text)',"
        " 'EXECUTE') AS ok"
    ).fetchone()
    assert public["ok"] is False


def test_a_negative_retention_setting_stops_the_program_naming_it() -> None:
    from orderflow_ingest.settings import SettingsError, load_settings

    base = {
        "ORDERFLOW_DATABASE_URL": "postgresql://x@127.0.0.1/x",
        "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
        "ORDERFLOW_S3_BUCKET": "b",
        "ORDERFLOW_INGEST_DOMAINS": "orderflow.test",
    }
    assert load_settings("/dev/null", base).retention_days == 0
    with pytest.raises(SettingsError, match="ORDERFLOW_RETENTION_DAYS"):
        load_settings("/dev/null", {**base, "ORDERFLOW_RETENTION_DAYS": "-1"})
