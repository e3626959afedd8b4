"""The RQ job `extract_attachments`: raw message in S3 -> document objects and rows -> hand-off.

The delivery service enqueues it by dotted path once the raw message is safe in S3 (STORED).
Idempotent end to end: the message row is locked for the whole run, so two runs of one message
never overlap; S3 keys and document rows are keyed by (message, part path), so a retry rewrites
rather than adds; a message already PARSED or FAILED is left alone. Faults split three ways:

- a part that is corrupt is recorded (document FAILED, with its reason) and the rest go on;
- a part whose row the database refuses (a DataError: text it cannot hold) is a content
  failure of that part: recorded in inbound_message_part as `failed`, its object never written,
  the other parts still become documents;
- a message that cannot be walked at all ends FAILED with error_json (its raw stays in S3);
- an infrastructure fault (S3, PostgreSQL, Redis, spool disk) raises, and RQ retries it with
  the backoff the job was enqueued with (job_queue.ATTACHMENT_RETRY).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from rq import get_current_job
from rq.job import Job

from orderflow_ingest import db, documents, job_queue, messages, metrics, storage
from orderflow_ingest.jobs import safetext
from orderflow_ingest.jobs.context import JobContext, get_context
from orderflow_ingest.jobs.extract import Document, Extraction, extract_message
from orderflow_ingest.logs import log_event

# A row the database refuses for what it holds: the part's content, not our infrastructure.
CONTENT_ERRORS = (psycopg.DataError, UnicodeError)
# Documents listed one by one in the `attachments.parsed` log line; the rest are counted.
LOGGED_DOCUMENTS = 50


class NotStoredYet(Exception):
    """The row is still RECEIVED: the raw message is not known to be in S3. Retried."""


@dataclass
class ExtractionResult:
    """What one run did; also the job's result in RQ (kept small)."""

    status: str  # parsed, failed, already_parsed, already_failed, missing
    documents: list[str]
    skipped: int = 0

    def as_result(self) -> dict[str, Any]:
        return {"status": self.status, "documents": self.documents, "skipped": self.skipped}


def extract_attachments(inbound_message_id: str, trace_id: str | None = None) -> dict[str, Any]:
    """RQ entry point (orderflow_ingest.jobs.attachments.extract_attachments)."""
    job = get_current_job()
    if trace_id is None and job is not None:
        trace_id = job.meta.get("trace_id")
    context = get_context()
    context.redis  # noqa: B018 - builds the client and points metrics at it
    try:
        return run(context, inbound_message_id, trace_id).as_result()
    finally:
        metrics.flush()


def run(context: JobContext, inbound_message_id: str, trace_id: str | None) -> ExtractionResult:
    started = time.monotonic()
    settings = context.settings
    fields: dict[str, Any] = {"inbound_message_id": inbound_message_id, "trace_id": trace_id}
    try:
        with db.connect(settings.database_url, timeout=settings.backend_timeout) as conn:
            row = messages.lock_message(conn, inbound_message_id)
            if row is None:
                conn.rollback()
                log_event("attachments.message_missing", logging.ERROR, **fields)
                return ExtractionResult("missing", [])
            fields.update(
                trace_id=trace_id or row["trace_id"],
                org_id=row["org_id"],
                message_id=row["message_id"],
                queue_id=row["postfix_queue_id"],
            )
            status = row["status"]
            if status in ("PARSED", "FAILED"):
                existing = documents.documents_for_message(conn, inbound_message_id)
                conn.commit()
                if status == "PARSED":
                    _ensure_handed_off(context, existing, fields)
                log_event(
                    "attachments.already_done",
                    status=status,
                    document_ids=[document["id"] for document in existing],
                    **fields,
                )
                return ExtractionResult(f"already_{status.lower()}", [d["id"] for d in existing])
            if status != "STORED":
                raise NotStoredYet(f"inbound_message {inbound_message_id} is {status}")
            log_event("attachments.started", raw_storage_key=row["raw_storage_key"], **fields)
            body = storage.open_object(context.s3, settings.s3_bucket, row["raw_storage_key"])
            try:
                extraction = extract_message(
                    body,
                    spool_dir=_spool_dir(settings.spool_dir),
                    max_depth=settings.max_mime_depth,
                    max_header_bytes=settings.max_header_bytes,
                    max_documents=settings.max_documents_per_message,
                )
            finally:
                body.close()
            with extraction:
                outcome = _store(context, conn, row, extraction, fields)
        metrics.observe(
            "smtp_attachment_extraction_duration_ms", (time.monotonic() - started) * 1000
        )
        if outcome.status == "parsed":
            _hand_off(context, outcome, fields)
    except Exception as error:
        log_event(
            "attachments.retry",
            logging.WARNING,
            error_type=type(error).__name__,
            error=str(error)[:300],
            **fields,
        )
        metrics.count(
            "smtp_processing_errors_total",
            org_id=fields.get("org_id", ""),
            error_type=f"extract_{type(error).__name__}",
        )
        raise
    return outcome


def _store(
    context: JobContext,
    conn: Any,
    row: dict[str, Any],
    extraction: Extraction,
    fields: dict[str, Any],
) -> ExtractionResult:
    """Rows, objects and status in one transaction (the row lock is still held).

    Each document's row is written first, in a savepoint, and its object only once the row is
    accepted: a part the database refuses never leaves an object behind. Keys are
    deterministic, so a run that fails later (an S3 or database outage rolls every row back)
    leaves only objects that the retry overwrites with the same bytes.
    """
    message_id = row["id"]
    org_id = row["org_id"]
    if extraction.error is not None:
        error: dict[str, Any] = dict(extraction.error)
        error["defects"] = extraction.defects[:50]
        messages.mark_failed(conn, message_id, safetext.clean_json(error))
        conn.commit()
        log_event(
            "attachments.failed",
            logging.ERROR,
            error=safetext.clean(str(error["error"])),
            detail=safetext.clean_optional(error.get("detail")),
            **fields,
        )
        metrics.count("smtp_processing_errors_total", org_id=org_id, error_type="unparseable")
        return ExtractionResult("failed", [])
    stored: list[str] = []
    ids: list[str] = []
    rejected = 0
    for document in extraction.documents:
        key = storage.document_key(org_id, message_id, document.part, document.filename)
        saved = _save_row(conn, org_id, message_id, document, key, fields)
        if saved is None:
            rejected += 1
            continue
        with metrics.timed("orderflow_s3_put_seconds"):
            storage.put_file(
                context.s3, context.settings.s3_bucket, key, document.spool_path, document.mime_type
            )
        ids.append(saved["id"])
        if document.status == "STORED":
            stored.append(saved["id"])
        if document.status == "FAILED":
            log_event(
                "attachments.part_corrupt",
                logging.WARNING,
                document_id=saved["id"],
                part=document.part,
                reason=safetext.clean(document.reason),
                **fields,
            )
    for skipped in extraction.skipped:
        documents.record_part(
            conn,
            message_id,
            skipped.part,
            safetext.clean(skipped.content_type),
            skipped.decision,
            safetext.clean(skipped.reason),
        )
    messages.mark_parsed(conn, message_id)
    conn.commit()
    level = logging.INFO if ids else logging.WARNING
    log_event(
        "attachments.parsed" if ids else "attachments.no_documents",
        level,
        document_ids=ids,
        documents=[_summary(document) for document in extraction.documents[:LOGGED_DOCUMENTS]],
        skipped=len(extraction.skipped),
        over_cap=extraction.over_cap,
        rejected=rejected,
        defects=len(extraction.defects),
        size_bytes=extraction.size_bytes,
        **fields,
    )
    if extraction.over_cap:
        log_event(
            "attachments.document_cap",
            logging.WARNING,
            cap=context.settings.max_documents_per_message,
            over_cap=extraction.over_cap,
            **fields,
        )
    metrics.count("orderflow_documents_extracted_total", len(ids))
    return ExtractionResult("parsed", stored, skipped=len(extraction.skipped) + rejected)


def _save_row(
    conn: Any,
    org_id: str,
    message_id: str,
    document: Document,
    key: str,
    fields: dict[str, Any],
) -> dict[str, Any] | None:
    """The document's row, in a savepoint; None when the database refuses what it holds.

    A refusal is recorded against the part (decision `failed`, with the reason) so that
    `show`/`trace` say why the part is missing; the raw message still holds it.
    """
    try:
        with conn.transaction():
            saved: dict[str, Any] = documents.upsert_document(
                conn,
                org_id=org_id,
                inbound_message_id=message_id,
                part_path=document.part,
                file_name=document.filename,
                mime_type=document.mime_type,
                size_bytes=document.size_bytes,
                sha256=document.sha256,
                storage_key=key,
                status=document.status,
                decision=safetext.clean_json(_decision(document)),
            )
            return saved
    except CONTENT_ERRORS as error:
        reason = (
            f"document refused by the database ({type(error).__name__}): not stored;"
            " the raw message keeps it"
        )
        with conn.transaction():
            documents.record_part(
                conn,
                message_id,
                document.part,
                safetext.clean(document.declared_type),
                "failed",
                reason,
            )
        log_event(
            "attachments.part_refused",
            logging.WARNING,
            part=document.part,
            error_type=type(error).__name__,
            **fields,
        )
        metrics.count(
            "smtp_processing_errors_total",
            org_id=org_id,
            error_type=f"part_{type(error).__name__}",
        )
        return None


def _spool_dir(configured: str) -> str | None:
    """Decoded parts go to the host's spool (disk, sized for mail) when this worker may write
    there, else to the system temp dir (which may be RAM-backed tmpfs: prefer the spool)."""
    if os.path.isdir(configured) and os.access(configured, os.W_OK | os.X_OK):
        return configured
    return None


def _decision(document: Document) -> dict[str, Any]:
    return {
        "reason": document.reason,
        "original_filename": document.original_filename,
        "declared_type": document.declared_type,
        "defects": document.defects[:20],
    }


def _summary(document: Document) -> dict[str, Any]:
    return {
        "part": document.part,
        "filename": safetext.clean(document.filename),
        "mime_type": document.mime_type,
        "size_bytes": document.size_bytes,
        "status": document.status,
    }


def _hand_off(context: JobContext, outcome: ExtractionResult, fields: dict[str, Any]) -> None:
    """extract_document(document_id, org_id) once per stored document (deterministic job ids).

    After the commit, so the downstream job always finds its row; a Redis fault here raises,
    and the retried run finds PARSED and enqueues whatever is still missing.
    """
    for document_id in outcome.documents:
        enqueued = job_queue.enqueue_extract_document(
            context.redis, context.settings, document_id, fields["org_id"], fields["trace_id"]
        )
        log_event("attachments.handed_off", document_id=document_id, enqueued=enqueued, **fields)


def _ensure_handed_off(
    context: JobContext, existing: list[dict[str, Any]], fields: dict[str, Any]
) -> None:
    """A re-run on a PARSED message: enqueue downstream jobs that were never enqueued.

    Covers a crash between the commit and the hand-off. Jobs that exist (waiting, running,
    finished) are left alone: a redundant run of this job must not re-extract documents.
    """
    for document in existing:
        if document["status"] != "STORED":
            continue
        job_id = job_queue.document_job_id(document["id"])
        if Job.exists(job_id, connection=context.redis):
            continue
        job_queue.enqueue_extract_document(
            context.redis, context.settings, document["id"], fields["org_id"], fields["trace_id"]
        )
        log_event("attachments.handed_off", document_id=document["id"], late=True, **fields)
