"""SMTP to documents: Postfix → pipe → delivery service → RQ → `orderflow-ingest worker`.

A stack of its own with one worker (run by the devstack as the unprivileged service user,
exactly as deployed), so the whole path of spec FR-ORQ-003 runs with no step done by the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from mime_builders import PNG, XLSX, sha
from psycopg.rows import dict_row
from redis import Redis
from samples import address, minimal_pdf, order_email
from support_wait import wait_for

from orderflow_ingest import documents, job_queue

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PDF = minimal_pdf("PO 9000")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture(scope="module")
def worker_stack(make_stack: Callable[..., Any]) -> Any:
    return make_stack(workers=1)


def parsed_row(stack: Any, message_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with psycopg.connect(stack.settings.database_url, row_factory=dict_row) as conn:
            row = conn.execute(
                "SELECT id::text AS id, org_id::text AS org_id, status, trace_id,"
                " postfix_queue_id FROM inbound_message WHERE source_message_id = %s",
                (message_id,),
            ).fetchone()
        return row if row and row["status"] in ("PARSED", "FAILED") else None

    return wait_for(check, 60, f"{message_id} to be PARSED")  # type: ignore[no-any-return]


def worker_events(stack: Any, event: str) -> list[dict[str, Any]]:
    lines = stack.component_log("worker-1").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{") and f'"{event}"' in line]


def test_email_to_documents_through_the_deployed_worker(
    worker_stack: Any, send_mail: Callable[..., Any]
) -> None:
    msg: EmailMessage = order_email(
        to=address("acme"),
        attachments=[("PO-9000.pdf", "application/pdf", PDF), ("lines.xlsx", XLSX_TYPE, XLSX)],
    )
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="photo.png")
    send_mail(worker_stack, msg, [address("acme")])
    row = parsed_row(worker_stack, msg["Message-ID"])
    assert row["status"] == "PARSED"
    settings = worker_stack.settings
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        found = documents.documents_for_message(conn, row["id"])
    assert sorted((d["file_name"], d["mime_type"], d["sha256"]) for d in found) == sorted(
        [
            ("PO-9000.pdf", "application/pdf", sha(PDF)),
            ("lines.xlsx", XLSX_TYPE, sha(XLSX)),
            ("photo.png", "image/png", sha(PNG)),  # an unreferenced photo is a document
        ]
    )
    from orderflow_ingest.storage import make_client

    s3 = make_client(settings)
    for document in found:
        body = s3.get_object(Bucket=settings.s3_bucket, Key=document["storage_key"])["Body"]
        assert sha(body.read()) == document["sha256"]
    redis = Redis.from_url(settings.redis_url)
    for document in found:
        job = job_queue.fetch_job(redis, job_queue.document_job_id(document["id"]))
        assert job.origin == settings.extraction_queue
        assert job.args == [document["id"], row["org_id"]]
    events = [
        e
        for e in worker_events(worker_stack, "attachments.parsed")
        if e.get("inbound_message_id") == row["id"]
    ]
    (event,) = events
    assert event["trace_id"] == row["trace_id"]
    assert event["queue_id"] == row["postfix_queue_id"]
    assert sorted(event["document_ids"]) == sorted(d["id"] for d in found)


def test_email_without_attachments_is_parsed_with_a_warning(
    worker_stack: Any, send_mail: Callable[..., Any]
) -> None:
    msg = order_email(to=address("acme"), attachments=[], body="10x A-1 please")
    send_mail(worker_stack, msg, [address("acme")])
    row = parsed_row(worker_stack, msg["Message-ID"])
    assert row["status"] == "PARSED"
    warnings = [
        e
        for e in worker_events(worker_stack, "attachments.no_documents")
        if e.get("inbound_message_id") == row["id"]
    ]
    assert warnings and warnings[0]["level"] == "WARNING"
