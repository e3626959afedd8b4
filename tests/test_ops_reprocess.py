"""`reprocess` against the stack, with mail sent through its Postfix.

The repaired failure is a real one: the workers ran with ORDERFLOW_MAX_HEADER_BYTES set too
low for mail that crossed many relays, so the job marked such messages FAILED
("unparseable: header block larger than ..."). The operator fixes the setting, restarts the
workers and replays what failed: that is `reprocess --status FAILED --since ...`.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from ops_support import (
    CLI,
    cli,
    cli_json,
    documents_of,
    env_with,
    relayed_order,
    run_worker,
    wait_status,
)
from rq.job import Job
from samples import address

from orderflow_ingest import messages
from orderflow_ingest.job_queue import attachment_job_id, fetch_job
from orderflow_ingest.ops import queries

pytestmark = pytest.mark.stack
MISCONFIGURED = {"ORDERFLOW_MAX_HEADER_BYTES": "2048"}


def _failed_by_small_header_limit(stack: Any, db: Any, send_mail: Any) -> dict[str, Any]:
    run_worker(stack)  # the misconfigured worker must see only this test's job
    msg = relayed_order()
    send_mail(stack, msg, [address("acme")])
    wait_status(db, msg["Message-ID"], ("STORED",))
    run_worker(stack, env=MISCONFIGURED)
    row = wait_status(db, msg["Message-ID"], ("FAILED",))
    assert row["error_json"]["error"] == "unparseable"
    assert "header block larger than 2048" in row["error_json"]["detail"]
    assert documents_of(db, row["id"]) == []
    return row


def test_reprocess_repairs_failed_messages_after_the_fix(
    stack: Any, db: Any, redis_conn: Any, send_mail: Any
) -> None:
    row = _failed_by_small_header_limit(stack, db, send_mail)
    job_id = attachment_job_id(row["id"])

    # Dry run: lists it, changes nothing.
    code, report = cli_json(
        stack, "reprocess", "--status", "FAILED", "--org", "acme", "--since", "10m", "--dry-run"
    )
    assert code == 0, report
    (step,) = [s for s in report["messages"] if s["inbound_message_id"] == row["id"]]
    assert step["action"] == "reopen" and step["status_before"] == "FAILED"
    assert not step["done"]
    assert report["dry_run"] is True
    assert wait_status(db, row["source_message_id"], ("FAILED",))["status"] == "FAILED"
    assert Job.fetch(job_id, connection=redis_conn).get_status().value == "finished"

    # The fix is in (workers back on the default limit); replay.
    result = cli(stack, "reprocess", row["source_message_id"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{row['id']}  acme" in result.stdout
    assert "reopen: FAILED -> STORED, enqueue extraction: job enqueued" in result.stdout
    assert wait_status(db, row["source_message_id"], ("STORED",))
    job = fetch_job(redis_conn, job_id)
    assert job.get_status().value == "queued"
    assert job.kwargs["trace_id"] == row["trace_id"]  # one grep still follows the message

    run_worker(stack)
    repaired = wait_status(db, row["source_message_id"], ("PARSED",))
    (document,) = documents_of(db, repaired["id"])
    assert document["file_name"] == "PO-4711.pdf"
    history = db.execute(
        "SELECT status FROM inbound_message_event WHERE inbound_message_id = %s ORDER BY id",
        (row["id"],),
    ).fetchall()
    assert [h["status"] for h in history] == ["RECEIVED", "STORED", "FAILED", "STORED", "PARSED"]
    reopened = db.execute(
        "SELECT error_json FROM inbound_message_event WHERE inbound_message_id = %s"
        " AND status = 'STORED' ORDER BY at DESC LIMIT 1",
        (row["id"],),
    ).fetchone()["error_json"]
    assert reopened["reprocess"].startswith("orderflow-ingest reprocess by ")  # who, and why
    assert reopened["previous"]["error"] == "unparseable"

    # Reprocessing a PARSED message again: same document, nothing duplicated; --wait says so.
    worker = subprocess.Popen(
        [
            CLI,
            "worker",
            "--max-jobs",
            "1",
            "--without-scheduler",
            "--config",
            str(stack.config_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env_with(),
    )
    try:
        code, report = cli_json(stack, "reprocess", row["id"], "--wait", "--timeout", "60")
    finally:
        worker.wait(timeout=60)
    assert code == 0, report
    (step,) = report["messages"]
    assert step["status_before"] == "PARSED" and step["status_after"] == "PARSED"
    assert step["documents_before"] == 1 and step["documents_after"] == 1
    assert step["job_status"] == "finished"
    assert documents_of(db, row["id"]) == [document]


def test_reprocess_says_what_cannot_be_reprocessed(stack: Any, db: Any, s3: Any) -> None:
    org_id = db.execute("SELECT id::text AS id FROM org WHERE slug = 'acme'").fetchone()["id"]
    # A message that failed before its raw reached S3 (no raw_storage_key) ...
    no_raw = _insert_received(db, org_id)
    messages.mark_failed(db, no_raw["id"], {"stage": "deliver", "reason": "test"})
    # ... one still RECEIVED: Postfix holds it ...
    received = _insert_received(db, org_id)
    try:
        result = cli(stack, "reprocess", no_raw["id"], received["id"], "does-not-exist@nowhere")
    finally:  # not left RECEIVED for the ingest-lag and sweep tests to find
        messages.mark_failed(db, received["id"], {"stage": "test", "reason": "cleanup"})
    assert result.returncode == 1
    assert "without a stored raw message" in result.stdout
    assert "Postfix still holds it" in result.stdout
    assert "no message matches 'does-not-exist@nowhere'" in result.stdout
    assert queries.statuses_of(db, [no_raw["id"]]) == {no_raw["id"]: "FAILED"}


def test_reprocess_reports_a_raw_object_missing_from_the_bucket(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    row = _failed_by_small_header_limit(stack, db, send_mail)
    s3.delete_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])
    result = cli(stack, "reprocess", row["id"])
    assert result.returncode == 1
    assert f"raw object {row['raw_storage_key']} is missing" in result.stdout
    assert wait_status(db, row["source_message_id"], ("FAILED",))


def test_reprocess_needs_a_selection(stack: Any) -> None:
    result = cli(stack, "reprocess")
    assert result.returncode == 2
    assert "--status FAILED" in result.stderr
    assert cli(stack, "reprocess", "--status", "RECEIVED").returncode == 2


def _insert_received(db: Any, org_id: str) -> dict[str, Any]:
    """A RECEIVED row as the delivery service writes it before the raw reaches S3."""
    message_id = f"<{uuid.uuid4().hex}@customer.example>"

    row = messages.insert_received(
        db,
        messages.NewMessage(
            org_id=org_id,
            source_message_id=message_id,
            message_id_synthetic=False,
            from_email="buyer@customer.example",
            to_email=address("acme"),
            subject="test",
            received_at=datetime.now(UTC),
            sha256="0" * 64,
            size_bytes=1,
            trace_id="f" * 32,
            envelope_sender="buyer@customer.example",
            envelope_recipient=address("acme"),
            postfix_queue_id="ABCDEF12345",
            auth_results=None,
        ),
    )
    assert row is not None
    return row
