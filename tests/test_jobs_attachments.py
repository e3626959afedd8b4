"""extract_attachments through a real RQ worker (`orderflow-ingest worker`) against the stack.

Messages are put in S3 and given a STORED row directly (the SMTP path is in test_jobs_e2e.py),
then enqueued exactly as the delivery service does. The worker here works a private queue, so
jobs other tests left on the stack's default queue are not touched.

Spec attachment tests by name: PDF, XLSX, CSV, ZIP, Unicode and RFC 2047 names, nested
multipart, inline image excluded, corrupt attachment, no attachments; plus re-runs, an
unparseable message, an S3 outage, and a SIGKILLed work-horse and worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mime_builders import CSV_BYTES, PNG, XLSX, ZIP, b64, message, sha, tnef_blob
from psycopg.rows import dict_row
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from samples import minimal_pdf
from support_wait import wait_for

from orderflow_ingest import documents, job_queue, messages, orgs, storage
from orderflow_ingest.jobs import attachments, context
from orderflow_ingest.ops import queries
from orderflow_ingest.settings import Settings, load_settings

pytestmark = pytest.mark.stack

VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
RUN = uuid.uuid4().hex[:8]
ATTACHMENT_QUEUE = f"test-attachments-{RUN}"
EXTRACTION_QUEUE = f"test-extraction-{RUN}"
PDF = minimal_pdf("PO 4711")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture(scope="module")
def job_settings(stack: Any) -> Settings:
    """The stack's settings with this module's private queues."""
    return load_settings(str(stack.config_path), environ=worker_overrides())


def worker_overrides() -> dict[str, str]:
    return {
        "ORDERFLOW_ATTACHMENT_QUEUE": ATTACHMENT_QUEUE,
        "ORDERFLOW_EXTRACTION_QUEUE": EXTRACTION_QUEUE,
    }


def worker_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERFLOW_")}
    env.update(worker_overrides())
    return env


@dataclass
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    log: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                found.append(json.loads(line))
        return found

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def horse_pid(self) -> int | None:
        """The forked work-horse: the child that RQ put in its own process group."""
        for pid in self.children():
            if _pgrp(pid) == pid:
                return pid
        return None

    def kill_scheduler(self) -> None:
        """RQ's scheduler is a forked child that outlives a SIGKILLed worker: end it too."""
        for pid in self.children():
            if _pgrp(pid) != pid:
                os.kill(pid, signal.SIGKILL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        self.popen.wait(timeout=30)


@pytest.fixture
def start_worker(stack: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*extra: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [
                    str(VENV_BIN / "orderflow-ingest"),
                    "worker",
                    "--config",
                    str(stack.config_path),
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=worker_env(),
            )
        process = WorkerProcess(popen, log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.kill(signal.SIGTERM)


def run_burst(start: Callable[..., WorkerProcess], timeout: float = 120) -> WorkerProcess:
    process = start("--burst")
    assert process.popen.wait(timeout=timeout) == 0, process.log.read_text()
    return process


def store_message(
    settings: Settings, db: psycopg.Connection[Any], s3: Any, raw: bytes, slug: str = "acme"
) -> str:
    """What the delivery service does before it enqueues: raw in S3, row STORED."""
    org = orgs.org_by_slug(db, slug)
    assert org is not None
    digest = hashlib.sha256(raw).hexdigest()
    # The dedup gate also hashes the content as sent (issue 10 item 2), where it does.
    content = (
        {"content_sha256": digest}
        if "content_sha256" in {f.name for f in dataclasses.fields(messages.NewMessage)}
        else {}
    )
    row = messages.insert_received(
        db,
        messages.NewMessage(
            **content,
            org_id=org["id"],
            source_message_id=make_msgid(domain="test.example"),
            message_id_synthetic=False,
            from_email="buyer@customer.example",
            to_email=f"orders+{slug}@orderflow.test",
            subject="PO",
            received_at=datetime.now(UTC),
            sha256=digest,
            size_bytes=len(raw),
            trace_id=f"trace-{uuid.uuid4().hex[:12]}",
            envelope_sender="buyer@customer.example",
            envelope_recipient=f"orders+{slug}@orderflow.test",
            postfix_queue_id=None,
            auth_results=None,
        ),
    )
    assert row is not None
    key = storage.raw_message_key(org["id"], row["id"])
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=raw)
    messages.mark_stored(db, row["id"], key)
    return str(row["id"])


def enqueue(
    settings: Settings, redis_conn: Redis, message_id: str, db: psycopg.Connection[Any]
) -> None:
    (row,) = queries.resolve(db, message_id).messages
    job_queue.enqueue_extract_attachments(redis_conn, settings, message_id, row["trace_id"])


def status(db: psycopg.Connection[Any], message_id: str) -> str:
    return queries.statuses_of(db, [message_id])[message_id]


def email_with(*files: tuple[str, str, bytes], body: str = "Order attached.") -> bytes:
    msg = EmailMessage()
    msg["From"] = "buyer@customer.example"
    msg["To"] = "orders+acme@orderflow.test"
    msg["Subject"] = "PO"
    msg["Message-ID"] = make_msgid()
    msg.set_content(body)
    for filename, mime_type, data in files:
        maintype, subtype = mime_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def raw_lines(*lines: str) -> bytes:
    return message(
        "From: buyer@customer.example",
        "To: orders+acme@orderflow.test",
        "Subject: PO",
        f"Message-ID: {make_msgid()}",
        "MIME-Version: 1.0",
        *lines,
    )


# --- the spec's attachment tests, through one burst worker --------------------------------------

SPEC_MESSAGES: dict[str, bytes] = {
    "pdf": email_with(("PO-4711.pdf", "application/pdf", PDF)),
    "xlsx": email_with(("order.xlsx", XLSX_TYPE, XLSX)),
    "csv": email_with(("order.csv", "text/csv", CSV_BYTES)),
    "zip": email_with(("orders.zip", "application/zip", ZIP)),
    "unicode": email_with(("Bestellung Größe 注文.pdf", "application/pdf", PDF)),
    "rfc2047": raw_lines(
        'Content-Type: multipart/mixed; boundary="b"',
        "",
        "--b",
        "Content-Type: text/plain",
        "",
        "order",
        "--b",
        'Content-Type: application/pdf; name="=?UTF-8?B?QmVzdGVsbHVuZyDDnGJlcnNpY2h0LnBkZg==?="',
        "Content-Disposition: attachment;",
        ' filename="=?UTF-8?B?QmVzdGVsbHVuZyDDnGJlcnNpY2h0LnBkZg==?="',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--b--",
    ),
    "nested": raw_lines(
        'Content-Type: multipart/mixed; boundary="outer"',
        "",
        "--outer",
        'Content-Type: multipart/alternative; boundary="alt"',
        "",
        "--alt",
        "Content-Type: text/plain",
        "",
        "plain",
        "--alt",
        'Content-Type: multipart/mixed; boundary="deeper"',
        "",
        "--deeper",
        'Content-Type: application/pdf; name="deep.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--deeper--",
        "--alt--",
        "--outer",
        'Content-Type: text/csv; name="top.csv"',
        "",
        CSV_BYTES.decode().rstrip("\n"),
        "--outer--",
    ),
    "inline_image": raw_lines(
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        'Content-Type: multipart/related; boundary="r"',
        "",
        "--r",
        "Content-Type: text/html",
        "",
        '<p>Order attached <img src="cid:logo@acme"></p>',
        "--r",
        'Content-Type: image/png; name="logo.png"',
        "Content-Disposition: inline; filename=logo.png",
        "Content-ID: <logo@acme>",
        "Content-Transfer-Encoding: base64",
        "",
        b64(PNG),
        "--r--",
        "--m",
        'Content-Type: application/pdf; name="order.pdf"',
        "Content-Disposition: attachment; filename=order.pdf",
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--m--",
    ),
    "corrupt": raw_lines(
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        'Content-Type: application/pdf; name="broken.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        "%%%% not base64 at all ~~~ !!! " * 40,
        "--m",
        'Content-Type: application/pdf; name="fine.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--m--",
    ),
    "no_attachments": email_with(body="10x A-1, 5x B-7, no attachment"),
    "winmail": raw_lines(
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        "Content-Type: text/plain",
        "",
        "see winmail",
        "--m",
        'Content-Type: application/ms-tnef; name="winmail.dat"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(tnef_blob([("Auftrag 4711.pdf", PDF)])),
        "--m--",
    ),
}


@pytest.fixture(scope="module")
def spec_run(
    stack: Any, job_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Store and enqueue every spec message, then run one burst worker over them all."""
    with psycopg.connect(job_settings.database_url, autocommit=True, row_factory=dict_row) as db:
        from orderflow_ingest.storage import make_client

        s3 = make_client(job_settings)
        redis_conn = Redis.from_url(job_settings.redis_url)
        ids = {
            name: store_message(job_settings, db, s3, raw) for name, raw in SPEC_MESSAGES.items()
        }
        for message_id in ids.values():
            enqueue(job_settings, redis_conn, message_id, db)
    log = tmp_path_factory.mktemp("spec") / "worker.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [
                str(VENV_BIN / "orderflow-ingest"),
                "worker",
                "--config",
                str(stack.config_path),
                "--burst",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=worker_env(),
            timeout=180,
        )
    assert done.returncode == 0, log.read_text()
    ids["__log__"] = str(log)
    return ids


def docs(db: psycopg.Connection[Any], message_id: str) -> list[dict[str, Any]]:
    return documents.documents_for_message(db, message_id)


def single(db: psycopg.Connection[Any], message_id: str) -> dict[str, Any]:
    (document,) = docs(db, message_id)
    return document


def test_extract_pdf_attachment(
    spec_run: dict[str, str], db: Any, s3: Any, job_settings: Settings
) -> None:
    message_id = spec_run["pdf"]
    assert status(db, message_id) == "PARSED"
    document = single(db, message_id)
    assert document["file_name"] == "PO-4711.pdf"
    assert document["mime_type"] == "application/pdf"
    assert document["size_bytes"] == len(PDF)
    assert document["sha256"] == sha(PDF)
    assert document["status"] == "STORED"
    (row,) = queries.resolve(db, message_id).messages
    assert document["storage_key"] == f"documents/{row['org_id']}/{message_id}/1.2/PO-4711.pdf"
    stored = s3.get_object(Bucket=job_settings.s3_bucket, Key=document["storage_key"])
    assert stored["Body"].read() == PDF
    assert stored["ContentType"] == "application/pdf"


def test_extract_excel_xlsx_attachment(spec_run: dict[str, str], db: Any) -> None:
    document = single(db, spec_run["xlsx"])
    assert (document["file_name"], document["mime_type"]) == ("order.xlsx", XLSX_TYPE)
    assert document["sha256"] == sha(XLSX)


def test_extract_csv_attachment(spec_run: dict[str, str], db: Any) -> None:
    document = single(db, spec_run["csv"])
    assert (document["file_name"], document["mime_type"]) == ("order.csv", "text/csv")
    assert document["sha256"] == sha(CSV_BYTES)


def test_extract_zip_attachment_stored_as_is(
    spec_run: dict[str, str], db: Any, s3: Any, job_settings: Settings
) -> None:
    document = single(db, spec_run["zip"])
    assert document["mime_type"] == "application/zip"
    body = s3.get_object(Bucket=job_settings.s3_bucket, Key=document["storage_key"])["Body"].read()
    assert body == ZIP


def test_extract_attachment_with_unicode_filename(spec_run: dict[str, str], db: Any) -> None:
    document = single(db, spec_run["unicode"])
    assert document["file_name"] == "Bestellung Größe 注文.pdf"
    assert document["storage_key"].endswith("/Bestellung Größe 注文.pdf")


def test_extract_attachment_with_rfc2047_encoded_filename(
    spec_run: dict[str, str], db: Any
) -> None:
    assert single(db, spec_run["rfc2047"])["file_name"] == "Bestellung Übersicht.pdf"


def test_extract_nested_multipart_attachments(spec_run: dict[str, str], db: Any) -> None:
    found = {d["part_path"]: d["file_name"] for d in docs(db, spec_run["nested"])}
    assert found == {"1.1.2.1": "deep.pdf", "1.2": "top.csv"}


def test_inline_image_is_not_a_document(spec_run: dict[str, str], db: Any) -> None:
    message_id = spec_run["inline_image"]
    assert [d["file_name"] for d in docs(db, message_id)] == ["order.pdf"]
    parts = {p["part_path"]: p for p in documents.parts_for_message(db, message_id)}
    assert parts["1.1.2"]["decision"] == "inline-image"
    assert "multipart/related" in parts["1.1.2"]["reason"]


def test_corrupt_attachment_is_recorded_and_the_rest_extracted(
    spec_run: dict[str, str], db: Any, redis_conn: Redis
) -> None:
    message_id = spec_run["corrupt"]
    assert status(db, message_id) == "PARSED"
    by_name = {d["file_name"]: d for d in docs(db, message_id)}
    assert by_name["fine.pdf"]["status"] == "STORED"
    assert by_name["broken.pdf"]["status"] == "FAILED"
    assert "corrupt" in by_name["broken.pdf"]["decision_json"]["reason"]
    # Only the good document goes on to extraction.
    assert Job.exists(job_queue.document_job_id(by_name["fine.pdf"]["id"]), connection=redis_conn)
    assert not Job.exists(
        job_queue.document_job_id(by_name["broken.pdf"]["id"]), connection=redis_conn
    )


def test_no_attachments_is_parsed_with_a_warning(spec_run: dict[str, str], db: Any) -> None:
    message_id = spec_run["no_attachments"]
    assert status(db, message_id) == "PARSED"
    assert docs(db, message_id) == []
    log = Path(spec_run["__log__"]).read_text()
    warnings = [
        json.loads(line) for line in log.splitlines() if '"attachments.no_documents"' in line
    ]
    assert any(w["inbound_message_id"] == message_id and w["level"] == "WARNING" for w in warnings)


def test_winmail_dat_contents_become_documents(spec_run: dict[str, str], db: Any) -> None:
    document = single(db, spec_run["winmail"])
    assert (document["part_path"], document["file_name"]) == ("1.2.1", "Auftrag 4711.pdf")
    assert document["sha256"] == sha(PDF)


def test_every_part_has_a_recorded_decision(spec_run: dict[str, str], db: Any) -> None:
    message_id = spec_run["nested"]
    recorded = {p["part_path"] for p in documents.parts_for_message(db, message_id)}
    recorded |= {d["part_path"] for d in docs(db, message_id)}
    assert recorded == {"1", "1.1", "1.1.1", "1.1.2", "1.1.2.1", "1.2"}


def test_documents_are_handed_to_extraction_once_each(
    spec_run: dict[str, str], db: Any, redis_conn: Redis, job_settings: Settings
) -> None:
    message_id = spec_run["nested"]
    (row,) = queries.resolve(db, message_id).messages
    for document in docs(db, message_id):
        job = job_queue.fetch_job(redis_conn, job_queue.document_job_id(document["id"]))
        assert job.origin == EXTRACTION_QUEUE
        assert job.func_name == job_settings.extraction_function
        assert job.args == [document["id"], row["org_id"]]
        assert job.meta["trace_id"] == row["trace_id"]


def test_log_lines_carry_the_identifiers(spec_run: dict[str, str]) -> None:
    lines = [
        json.loads(line)
        for line in Path(spec_run["__log__"]).read_text().splitlines()
        if line.startswith("{")
    ]
    parsed = [
        line
        for line in lines
        if line["event"] == "attachments.parsed" and line["inbound_message_id"] == spec_run["pdf"]
    ]
    (event,) = parsed
    assert event["trace_id"].startswith("trace-")
    assert event["org_id"] and event["message_id"]
    assert len(event["document_ids"]) == 1


# --- idempotency, failures, outages -------------------------------------------------------------


def test_rerun_creates_nothing_twice(
    spec_run: dict[str, str],
    db: Any,
    redis_conn: Redis,
    job_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    message_id = spec_run["nested"]
    before = docs(db, message_id)
    extraction = Queue(EXTRACTION_QUEUE, connection=redis_conn)
    queued_before = sorted(extraction.job_ids)
    # A second enqueue (a retried delivery, a redundant job): it finds PARSED and does nothing.
    job_queue.enqueue_extract_attachments(redis_conn, job_settings, message_id, "trace-rerun")
    process = run_burst(start_worker)
    assert docs(db, message_id) == before
    assert sorted(extraction.job_ids) == queued_before
    assert process.events("attachments.already_done")
    # An operator's reprocess (PARSED -> STORED) re-extracts into the same rows and ids.
    with db.transaction():
        assert messages.reopen_for_reprocess(db, message_id)
    job_queue.enqueue_extract_attachments(redis_conn, job_settings, message_id, "trace-reprocess")
    run_burst(start_worker)
    after = docs(db, message_id)
    assert status(db, message_id) == "PARSED"
    assert [(d["id"], d["part_path"], d["sha256"]) for d in after] == [
        (d["id"], d["part_path"], d["sha256"]) for d in before
    ]


def test_unparseable_message_ends_failed_and_raw_stays(
    db: Any,
    s3: Any,
    redis_conn: Redis,
    job_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    raw = b"Subject: x\nX-Huge: " + b"a" * (job_settings.max_header_bytes + 10) + b"\n\nbody\n"
    message_id = store_message(job_settings, db, s3, raw)
    enqueue(job_settings, redis_conn, message_id, db)
    run_burst(start_worker)
    (row,) = queries.resolve(db, message_id).messages
    assert row["status"] == "FAILED"
    assert row["error_json"]["error"] == "unparseable"
    assert s3.head_object(Bucket=job_settings.s3_bucket, Key=row["raw_storage_key"])[
        "ContentLength"
    ] == len(raw)


def test_s3_outage_raises_for_retry_and_changes_nothing(
    db: Any, s3: Any, job_settings: Settings
) -> None:
    message_id = store_message(job_settings, db, s3, email_with(("a.pdf", "application/pdf", PDF)))
    values = job_settings.as_dict()
    values["ORDERFLOW_S3_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    values["ORDERFLOW_BACKEND_TIMEOUT"] = 2.0
    broken = context.JobContext(Settings(values, job_settings.source))
    with pytest.raises(Exception) as raised:
        attachments.run(broken, message_id, "trace-outage")
    assert "Endpoint" in type(raised.value).__name__ or "Connect" in type(raised.value).__name__
    assert status(db, message_id) == "STORED"
    assert docs(db, message_id) == []
    # Back up: the retry does the work.
    outcome = attachments.run(context.JobContext(job_settings), message_id, "trace-outage")
    assert outcome.status == "parsed"
    assert len(docs(db, message_id)) == 1


def test_job_retry_policy_is_the_queue_modules(
    db: Any, s3: Any, redis_conn: Redis, job_settings: Settings
) -> None:
    message_id = store_message(job_settings, db, s3, email_with())
    enqueue(job_settings, redis_conn, message_id, db)
    job = job_queue.fetch_job(redis_conn, job_queue.attachment_job_id(message_id))
    assert job.func_name == "orderflow_ingest.jobs.attachments.extract_attachments"
    assert job.retries_left == job_queue.ATTACHMENT_RETRY.max
    Queue(ATTACHMENT_QUEUE, connection=redis_conn).remove(job)
    job.delete()


# --- a SIGKILLed worker's job is not lost --------------------------------------------------------


class RowLock:
    """Hold the message row locked, so the job blocks in lock_message at a known point."""

    def __init__(self, settings: Settings, message_id: str):
        self.conn = psycopg.connect(settings.database_url)
        self.conn.execute("SELECT 1 FROM inbound_message WHERE id = %s FOR UPDATE", (message_id,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def started_job(redis_conn: Redis, message_id: str) -> bool:
    job = Job.fetch(job_queue.attachment_job_id(message_id), connection=redis_conn)
    return job.get_status() == JobStatus.STARTED


def multi_part_message() -> bytes:
    return email_with(
        ("one.pdf", "application/pdf", PDF),
        ("two.csv", "text/csv", CSV_BYTES),
        ("three.xlsx", XLSX_TYPE, XLSX),
    )


def assert_extracted_once(db: Any, redis_conn: Redis, message_id: str) -> None:
    assert status(db, message_id) == "PARSED"
    found = docs(db, message_id)
    assert sorted(d["file_name"] for d in found) == ["one.pdf", "three.xlsx", "two.csv"]
    history = db.execute(
        "SELECT status FROM inbound_message_event WHERE inbound_message_id = %s ORDER BY at",
        (message_id,),
    ).fetchall()
    assert [h["status"] for h in history] == ["RECEIVED", "STORED", "PARSED"]
    extraction_ids = set(Queue(EXTRACTION_QUEUE, connection=redis_conn).job_ids)
    assert {job_queue.document_job_id(d["id"]) for d in found} <= extraction_ids


@pytest.mark.slow
def test_sigkilled_work_horse_job_is_retried_and_completes_once(
    db: Any,
    s3: Any,
    redis_conn: Redis,
    job_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The OOM killer's case: RQ sees its horse die, fails the job and, with retries left,
    schedules it again after the backoff."""
    message_id = store_message(job_settings, db, s3, multi_part_message())
    lock = RowLock(job_settings, message_id)
    enqueue(job_settings, redis_conn, message_id, db)
    worker = start_worker()
    try:
        wait_for(lambda: started_job(redis_conn, message_id), 30, "the job to start")
        horse = wait_for(worker.horse_pid, 10, "the work-horse")
        os.kill(horse, signal.SIGKILL)
        lock.release()
        wait_for(lambda: status(db, message_id) == "PARSED", 60, "the retried job")
        job = Job.fetch(job_queue.attachment_job_id(message_id), connection=redis_conn)
        wait_for(lambda: job.get_status() == JobStatus.FINISHED, 10, "job finished")
        assert job.retries_left == job_queue.ATTACHMENT_RETRY.max - 1
    finally:
        worker.kill(signal.SIGTERM)
    assert_extracted_once(db, redis_conn, message_id)


@pytest.mark.slow
def test_sigkilled_worker_job_is_recovered_by_the_next_worker(
    db: Any,
    s3: Any,
    redis_conn: Redis,
    job_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Worker and horse both SIGKILLed (systemd's KillMode=control-group): the job is left in
    RQ's StartedJobRegistry; the next worker on this host sees the dead pid and re-queues it."""
    message_id = store_message(job_settings, db, s3, multi_part_message())
    lock = RowLock(job_settings, message_id)
    enqueue(job_settings, redis_conn, message_id, db)
    first = start_worker()
    wait_for(lambda: started_job(redis_conn, message_id), 30, "the job to start")
    horse = wait_for(first.horse_pid, 10, "the work-horse")
    first.kill_scheduler()
    first.kill(signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    lock.release()
    registry = StartedJobRegistry(ATTACHMENT_QUEUE, connection=redis_conn)
    assert job_queue.attachment_job_id(message_id) in registry.get_job_ids(
        cleanup=False
    )  # abandoned
    second = run_burst(start_worker)
    (recovered,) = second.events("worker.requeued_abandoned")
    assert recovered["job_id"] == job_queue.attachment_job_id(message_id)
    assert_extracted_once(db, redis_conn, message_id)
    assert job_queue.attachment_job_id(message_id) not in registry.get_job_ids(cleanup=False)


@pytest.mark.slow
def test_sigkilled_worker_main_process_only_horse_finishes_and_nothing_doubles(
    db: Any,
    s3: Any,
    redis_conn: Redis,
    job_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Only the worker's main process dies: RQ's horse (own process group) runs on, finishes
    and cleans up after itself; the next worker finds nothing to recover and nothing doubles."""
    message_id = store_message(job_settings, db, s3, multi_part_message())
    lock = RowLock(job_settings, message_id)
    enqueue(job_settings, redis_conn, message_id, db)
    first = start_worker()
    wait_for(lambda: started_job(redis_conn, message_id), 30, "the job to start")
    horse = wait_for(first.horse_pid, 10, "the work-horse")
    first.kill_scheduler()
    first.kill(signal.SIGKILL)
    lock.release()
    wait_for(lambda: status(db, message_id) == "PARSED", 30, "the orphaned horse to finish")
    wait_for(lambda: not Path(f"/proc/{horse}").exists() or _zombie(horse), 30, "the horse to exit")
    run_burst(start_worker)
    assert_extracted_once(db, redis_conn, message_id)


def _pgrp(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
