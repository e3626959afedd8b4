"""RQ jobs are JSON in Redis, never pickle (issue 10 item 12).

With pickle, anyone who can write to Redis runs code in every worker: unpickling a job runs
whatever its payload says. Jobs are written as JSON by every enqueuing path and read as JSON
by the worker, which therefore refuses a planted pickle instead of executing it.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from ops_support import run_worker
from rq import Queue
from rq.job import JobStatus
from samples import minimal_pdf, order_email

from orderflow_ingest import job_queue

pytestmark = pytest.mark.stack


def _stored_message(settings: Any, db: Any, s3: Any) -> dict[str, Any]:
    """A STORED message with its raw in S3, as the delivery service leaves it."""
    msg = order_email(attachments=[("PO-JSON.pdf", "application/pdf", minimal_pdf())])
    trace_id = uuid.uuid4().hex
    row = db.execute(
        "INSERT INTO inbound_message (org_id, source, source_message_id, received_at, status,"
        " trace_id) SELECT id, 'EMAIL', %s, now(), 'RECEIVED', %s FROM org WHERE slug = 'acme'"
        " RETURNING id::text AS id, trace_id",
        (msg["Message-ID"], trace_id),
    ).fetchone()
    key = f"test-json/{row['id']}.eml"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=msg.as_bytes())
    db.execute(
        "UPDATE inbound_message SET status = 'STORED', raw_storage_key = %s WHERE id = %s",
        (key, row["id"]),
    )
    return dict(row)


def _raw_field(redis_conn: Any, job_id: str, field: str) -> bytes:
    value = redis_conn.hget(f"rq:job:{job_id}", field)
    assert value is not None, field
    try:
        return zlib.decompress(value)
    except zlib.error:
        return bytes(value)


def test_item12_rq_jobs_are_json_in_redis_and_still_run_end_to_end(
    stack: Any, db: Any, s3: Any, redis_conn: Any
) -> None:
    row = _stored_message(stack.settings, db, s3)
    job_id = job_queue.attachment_job_id(row["id"])
    assert job_queue.enqueue_extract_attachments(
        redis_conn, stack.settings, row["id"], row["trace_id"]
    )

    data = _raw_field(redis_conn, job_id, "data")
    assert not data.startswith(b"\x80"), "pickle protocol header"
    assert json.loads(data) == [
        job_queue.EXTRACT_ATTACHMENTS,
        None,
        [row["id"]],
        {"trace_id": row["trace_id"]},
    ]
    assert json.loads(_raw_field(redis_conn, job_id, "meta")) == {"trace_id": row["trace_id"]}

    run_worker(stack)
    status = db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],))
    assert status.fetchone()["status"] == "PARSED"
    job = job_queue.fetch_job(redis_conn, job_id)
    assert job.get_status() == JobStatus.FINISHED
    result = job.latest_result()
    assert result is not None and result.return_value["status"] == "parsed"
    (document_id,) = result.return_value["documents"]
    # The hand-off to the downstream extraction queue is JSON too.
    org = db.execute("SELECT org_id::text AS id FROM inbound_message WHERE id = %s", (row["id"],))
    downstream = _raw_field(redis_conn, job_queue.document_job_id(document_id), "data")
    assert json.loads(downstream)[2] == [document_id, org.fetchone()["id"]]


class _Planted:
    """What an attacker with Redis access would enqueue: unpickling it makes a directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_item12_worker_refuses_a_planted_pickle_job(
    stack: Any, redis_conn: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    planted = Queue(stack.settings.attachment_queue, connection=redis_conn).enqueue(
        "builtins.print", "harmless", job_id=f"planted-{uuid.uuid4().hex}"
    )
    payload = pickle.dumps((_Planted(str(marker)), None, (), {}))
    redis_conn.hset(planted.key, "data", zlib.compress(payload))

    run_worker(stack)
    assert not marker.exists(), "the worker unpickled a job from Redis"
    assert job_queue.fetch_job(redis_conn, planted.id).get_status() == JobStatus.FAILED
