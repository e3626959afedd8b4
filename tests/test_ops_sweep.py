"""`sweep` against the stack: a STORED message whose RQ job was lost is found and recovered;
a message whose job keeps failing is quarantined; RECEIVED rows are only reported."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from ops_support import cli, cli_json, documents_of, run_worker, wait_status
from rq import Queue
from rq.job import Job, JobStatus
from samples import address, order_email

from orderflow_ingest import messages
from orderflow_ingest.job_queue import attachment_job_id, enqueue_extract_attachments, fetch_job
from orderflow_ingest.ops import queries
from orderflow_ingest.ops.sweep import ATTEMPTS_KEY

pytestmark = pytest.mark.stack


def _mine(report: dict[str, Any], inbound_message_id: str) -> dict[str, Any] | None:
    found = [m for m in report["messages"] if m["inbound_message_id"] == inbound_message_id]
    return found[0] if found else None


def _stored_with_lost_job(stack: Any, db: Any, redis_conn: Any, send_mail: Any) -> dict[str, Any]:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    row = wait_status(db, msg["Message-ID"], ("STORED",))
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn)
    job.delete()  # lost: Redis restarted without persistence, or flushed by hand
    assert not Job.exists(attachment_job_id(row["id"]), connection=redis_conn)
    return row


def test_sweep_recovers_a_stored_message_whose_job_was_lost(
    stack: Any, db: Any, redis_conn: Any, send_mail: Any
) -> None:
    row = _stored_with_lost_job(stack, db, redis_conn, send_mail)
    job_id = attachment_job_id(row["id"])

    # Younger than the threshold: not stuck yet.
    code, report = cli_json(stack, "sweep")
    assert code == 0
    assert _mine(report, row["id"]) is None

    time.sleep(1.1)
    code, report = cli_json(stack, "sweep", "--older-than", "1s", "--dry-run")
    assert code == 0
    finding = _mine(report, row["id"])
    assert finding is not None
    assert finding["action"] == "would_reenqueue"
    assert finding["job_state"] == "missing"
    assert not Job.exists(job_id, connection=redis_conn)

    result = cli(stack, "sweep", "--older-than", "1s")
    assert result.returncode == 0, result.stderr
    assert f"{row['id']}  acme" in result.stdout
    assert "reenqueued: job lost (not in RQ); re-enqueued (sweep 1)" in result.stdout
    job = fetch_job(redis_conn, job_id)
    assert job.get_status() == JobStatus.QUEUED
    assert job.kwargs["trace_id"] == row["trace_id"]
    assert job.origin == stack.settings.attachment_queue

    # Idempotent: a second sweep (or one on another host) finds the job waiting.
    code, report = cli_json(stack, "sweep", "--older-than", "1s")
    assert code == 0
    assert _mine(report, row["id"])["action"] == "waiting"  # type: ignore[index]
    queue = Queue(stack.settings.attachment_queue, connection=redis_conn)
    assert queue.job_ids.count(job_id) == 1

    run_worker(stack)
    parsed = wait_status(db, row["source_message_id"], ("PARSED",))
    assert [d["file_name"] for d in documents_of(db, parsed["id"])] == ["PO-4711.pdf"]
    code, report = cli_json(stack, "sweep", "--older-than", "1s")
    assert code == 0 and _mine(report, row["id"]) is None
    # From a timer: --quiet prints nothing at all when nothing is stuck.
    quiet = cli(stack, "sweep", "--quiet", "--older-than", "1d")
    assert quiet.returncode == 0
    assert quiet.stdout == ""


def test_sweep_quarantines_a_message_whose_job_keeps_failing(
    stack: Any, db: Any, redis_conn: Any, send_mail: Any
) -> None:
    row = _stored_with_lost_job(stack, db, redis_conn, send_mail)
    # The job ran out of retries (RQ marked it failed) and was swept twice already.
    enqueue_extract_attachments(redis_conn, stack.settings, row["id"], row["trace_id"])
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn)
    Queue(stack.settings.attachment_queue, connection=redis_conn).remove(job)
    job.set_status(JobStatus.FAILED)
    redis_conn.set(ATTEMPTS_KEY.format(row["id"]), 2)
    time.sleep(1.1)

    code, report = cli_json(stack, "sweep", "--older-than", "1s", "--max-attempts", "3")
    assert code == 0
    assert _mine(report, row["id"])["action"] == "reenqueued"  # type: ignore[index]
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn)
    Queue(stack.settings.attachment_queue, connection=redis_conn).remove(job)
    job.set_status(JobStatus.FAILED)  # and it failed once more

    result = cli(stack, "sweep", "--older-than", "1s", "--max-attempts", "3")
    assert result.returncode == 0
    assert "quarantined" in result.stdout and "FAILED after 3 sweeps" in result.stdout
    failed = wait_status(db, row["source_message_id"], ("FAILED",))
    assert failed["error_json"]["stage"] == "sweep"
    # Quarantined means replayable once the cause is fixed.
    assert cli(stack, "reprocess", row["id"]).returncode == 0
    run_worker(stack)
    assert wait_status(db, row["source_message_id"], ("PARSED",))


def test_sweep_reports_received_rows_without_touching_them(stack: Any, db: Any) -> None:
    org_id = db.execute("SELECT id::text AS id FROM org WHERE slug = 'acme'").fetchone()["id"]
    row = messages.insert_received(
        db,
        messages.NewMessage(
            org_id=org_id,
            source_message_id=f"<{uuid.uuid4().hex}@customer.example>",
            message_id_synthetic=False,
            from_email=None,
            to_email=None,
            subject=None,
            received_at=datetime.now(UTC),
            sha256="0" * 64,
            size_bytes=1,
            trace_id=uuid.uuid4().hex,
            envelope_sender="buyer@customer.example",
            envelope_recipient=address("acme"),
            postfix_queue_id="9F8E7D6C5B4",
            auth_results=None,
        ),
    )
    assert row is not None
    try:
        time.sleep(1.1)
        code, report = cli_json(stack, "sweep", "--older-than", "1s")
        assert code == 0
        finding = _mine(report, row["id"])
        assert finding is not None
        assert finding["action"] == "reported"
        assert finding["in_postfix_queue"] is False
        assert "not in this host's Postfix queue" in finding["reason"]
        assert queries.statuses_of(db, [row["id"]]) == {row["id"]: "RECEIVED"}
    finally:
        messages.mark_failed(db, row["id"], {"stage": "test", "reason": "cleanup"})
