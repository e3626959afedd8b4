"""One delivery, step by step: spool and hash → org → RECEIVED row (dedup gate) → raw to S3
→ STORED → enqueue extraction. Returns an Outcome; the service turns it into an exit status.

"250 OK" from Postfix means the message is on Postfix's disk, and it stays there until this
returns DELIVERED or DUPLICATE: so every infrastructure fault is BACKEND_UNAVAILABLE (75,
deferred and retried) and malformed content is stored raw and marked FAILED, never bounced.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
import redis.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from psycopg_pool import PoolTimeout

from orderflow_ingest import events, headertext, messages, metrics, storage
from orderflow_ingest.addressing import custom_domain_parts, org_slug
from orderflow_ingest.auth_verdicts import parse_our_verdicts
from orderflow_ingest.db import Conn, Pool, is_broken_connection
from orderflow_ingest.job_queue import enqueue_extract_attachments
from orderflow_ingest.logs import log_event
from orderflow_ingest.orgs import org_lifecycle
from orderflow_ingest.outcomes import Outcome
from orderflow_ingest.pipe import headers
from orderflow_ingest.settings import Settings

# error_json reason of a message held for a disabled org (`org enable` + `reprocess` frees it).
ORG_DISABLED = "org_disabled"
# Messages up to this size stay in memory while hashed; larger ones spill to the spool dir.
IN_MEMORY_LIMIT = 1024 * 1024
BACKEND_ERRORS = (
    psycopg.OperationalError,
    PoolTimeout,
    BotoCoreError,
    ClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    queue_id: str | None

    def cleaned(self) -> Envelope:
        """The envelope as text PostgreSQL and the logs accept (8-bit addresses decoded,
        no NUL or lone surrogate)."""
        return Envelope(
            sender=headertext.from_parser(self.sender),
            recipient=headertext.from_parser(self.recipient),
            queue_id=None if self.queue_id is None else headertext.from_parser(self.queue_id),
        )


@dataclass
class Backends:
    """The long-lived clients one service process shares between its delivery threads."""

    settings: Settings
    pool: Pool
    s3: Any
    redis: Any
    # storage.SmallPut for raw messages below the multipart threshold; None: the client's
    # put_object (callers that hold only a boto3 client).
    s3_put: Any = None


@dataclass
class SpooledMessage:
    file: IO[bytes]
    sha256: str
    size: int
    header_block: bytes | None  # None: no end of headers within the limit
    # sha256 of the body after the header block, line ends as LF ("" without a header block)
    body_sha256: str = ""


class _LfDigest:
    """sha256 of a byte stream with CRLF read as LF (a CR split from its LF by a chunk
    boundary included): the same body hashes the same whichever way it travelled."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._cr = False

    def update(self, data: bytes) -> None:
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        self._digest.update(data.replace(b"\r\n", b"\n"))

    def hexdigest(self) -> str:
        digest = self._digest.copy()
        if self._cr:
            digest.update(b"\r")
        return digest.hexdigest()


def spool(chunks: Iterator[bytes], settings: Settings) -> SpooledMessage:
    """Copy the message to a spool file while hashing it (whole, and its body alone);
    memory stays bounded."""
    spooled = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - returned to the caller, who closes it
        max_size=IN_MEMORY_LIMIT, dir=settings.spool_dir, prefix="msg-"
    )
    try:
        digest = hashlib.sha256()
        body = _LfDigest()
        size = 0
        head = b""
        header_block: bytes | None = None
        limit = settings.max_header_bytes
        for chunk in chunks:
            spooled.write(chunk)
            digest.update(chunk)
            if header_block is not None:
                body.update(chunk)
            elif len(head) <= limit:
                head += chunk[: limit + 4 - len(head)]
                header_block = headers.split_header_block(head)
                if header_block is not None:  # the block ends inside this chunk
                    body.update(chunk[len(header_block) - size :])
            size += len(chunk)
        if header_block is None and len(head) <= limit and head:
            header_block = head  # a message that is all headers and no body
        spooled.seek(0)
        body_sha256 = body.hexdigest() if header_block is not None else ""
        return SpooledMessage(spooled, digest.hexdigest(), size, header_block, body_sha256)
    except BaseException:  # ENOSPC mid-write (issue 13): free the file, and its disk, now
        spooled.close()
        raise


@dataclass(frozen=True)
class ContentFacts:
    """What the delivery path reads from the content; `malformed` says why it is unusable."""

    facts: headers.HeaderFacts
    content_sha256: str
    auth_results: dict[str, Any] | None
    malformed: str | None


def read_facts(message: SpooledMessage, settings: Settings) -> ContentFacts:
    """Header facts and the content hash; never raises.

    Any exception here comes from the bytes of the message (a codec, the stdlib parser, the
    Authentication-Results parser), never from our infrastructure: the message is stored and
    marked FAILED with the reason, deduplicated by its exact bytes. Content never defers.
    """
    if message.header_block is None:
        reason = f"header block larger than {settings.max_header_bytes} bytes or empty"
    else:
        try:
            facts = headers.read_header_facts(message.header_block, message.body_sha256)
            header_digest = headers.content_header_digest(
                message.header_block, settings.effective_authserv_id
            )
            content = hashlib.sha256(
                b"orderflow-content-1\0" + header_digest + bytes.fromhex(message.body_sha256)
            ).hexdigest()
            verdicts = parse_our_verdicts(
                facts.authentication_results, settings.effective_authserv_id
            )
            return ContentFacts(facts, content, headertext.clean_json(verdicts), None)
        except headers.MalformedHeaders as error:
            reason = str(error)
        except Exception as error:  # a content fault by definition: see the docstring
            reason = f"header facts unreadable: {type(error).__name__}"
    facts = headers.HeaderFacts(
        message_id=headers.content_message_id(message.sha256),
        message_id_synthetic=True,
        from_email=None,
        to_email=None,
        subject=None,
    )
    return ContentFacts(facts, message.sha256, None, reason)


def deliver(backends: Backends, envelope: Envelope, message: SpooledMessage) -> Outcome:
    settings = backends.settings
    envelope = envelope.cleaned()
    trace_id = uuid.uuid4().hex
    context: dict[str, Any] = {
        "trace_id": trace_id,
        "queue_id": envelope.queue_id,
        "recipient": envelope.recipient,
        "sender": envelope.sender,
        "size_bytes": message.size,
        "sha256": message.sha256,
    }
    slug = org_slug(envelope.recipient, settings.local_part, settings.ingest_domains)
    content = read_facts(message, settings)
    context["message_id"] = content.facts.message_id
    custom = custom_domain_parts(envelope.recipient, settings.ingest_domains)
    if slug is None and custom is None:
        log_event("delivery.unknown_recipient", logging.WARNING, **context)
        return Outcome.UNKNOWN_ORG
    try:
        try:
            return _deliver(backends, envelope, message, content, slug, context)
        except psycopg.OperationalError as error:
            if not is_broken_connection(error):
                raise
            # A pooled connection that PostgreSQL dropped (restart): the pool has discarded
            # it; one more try on a fresh one. The dedup gate makes the retry safe.
            log_event("delivery.retry_broken_connection", logging.INFO, **context)
            return _deliver(backends, envelope, message, content, slug, context)
    except BACKEND_ERRORS as error:
        log_event(
            "delivery.deferred",
            logging.WARNING,
            error_type=type(error).__name__,
            error=str(error)[:500],
            **context,
        )
        metrics.count(
            "smtp_processing_errors_total",
            org_id=context.get("org_id", ""),
            error_type="backend_unavailable",
        )
        return Outcome.BACKEND_UNAVAILABLE


def _deliver(
    backends: Backends,
    envelope: Envelope,
    message: SpooledMessage,
    content: ContentFacts,
    slug: str | None,
    context: dict[str, Any],
) -> Outcome:
    facts, malformed = content.facts, content.malformed
    with backends.pool.connection() as conn:
        if slug is None:  # a custom domain's recipient (issue 13): its org from the database
            from orderflow_ingest.domains.store import org_slug_for_recipient

            _local, domain = custom_domain_parts(envelope.recipient, ()) or ("", "")
            slug = org_slug_for_recipient(conn, domain)
            if slug is None:
                conn.rollback()
                log_event("delivery.unknown_recipient", logging.WARNING, **context)
                return Outcome.UNKNOWN_ORG
        with metrics.timed("orderflow_db_seconds", operation="org_lookup"):
            org = org_lifecycle(conn, slug)
        if org is None or org["deleted_at"] is not None:
            # Never existed, or deleted with its data (`org delete`): nobody to keep it for.
            conn.rollback()
            log_event("delivery.unknown_org", logging.WARNING, org_slug=slug, **context)
            return Outcome.UNKNOWN_ORG
        context["org_id"] = org_id = org["id"]
        # Disabled after Postfix queued the message (new mail is refused at RCPT by the
        # milter): the message is stored and held FAILED, not bounced (issue 16).
        held = org["status"] != "active"
        new = messages.NewMessage(
            org_id=org_id,
            source_message_id=facts.message_id,
            message_id_synthetic=facts.message_id_synthetic,
            from_email=facts.from_email,
            to_email=facts.to_email,
            subject=facts.subject,
            received_at=datetime.now(UTC),
            sha256=message.sha256,
            size_bytes=message.size,
            trace_id=context["trace_id"],
            envelope_sender=envelope.sender,
            envelope_recipient=envelope.recipient,
            postfix_queue_id=envelope.queue_id,
            auth_results=content.auth_results,
            content_sha256=content.content_sha256,
        )
        with metrics.timed("orderflow_db_seconds", operation="insert_received"):
            created = messages.insert_received(conn, new)
            if created is not None and created["conflict_of"] is not None:
                _record_conflict(conn, created)
            conn.commit()
        if created is not None:
            log_event("delivery.received", inbound_message_id=created["id"], **context)
            if created["conflict_of"] is not None:
                _log_conflict(created, context)
        # A row we just created needs no lock: if a concurrent copy resumes and stores it
        # first, our conditional UPDATE to STORED finds it no longer RECEIVED. A copy that
        # finds an existing row locks it, so resumers take turns.
        row = created if created is not None else _lock_existing(conn, new)
        if row is None:  # deleted between the two statements: let Postfix retry
            conn.rollback()
            return Outcome.BACKEND_UNAVAILABLE
        context["inbound_message_id"] = row["id"]
        if row["trace_id"] != context["trace_id"]:
            context["first_trace_id"] = row["trace_id"]
        if row["status"] == "RECEIVED":
            key = storage.raw_message_key(org_id, row["id"])
            with metrics.timed("orderflow_s3_put_seconds"):
                _put_raw(backends, key, message)
            if held:
                return _hold_for_disabled_org(conn, row["id"], key, slug, context)
            if malformed is not None:
                error = headertext.clean_json({"stage": "deliver", "reason": malformed})
                messages.mark_failed(conn, row["id"], error, key)
                conn.commit()
                log_event(
                    "delivery.malformed_stored",
                    logging.ERROR,
                    reason=malformed,
                    raw_storage_key=key,
                    **context,
                )
                metrics.count("smtp_emails_received_total", org_id=org_id, status="FAILED")
                metrics.count(
                    "smtp_processing_errors_total", org_id=org_id, error_type="malformed_headers"
                )
                return Outcome.MALFORMED_STORED
            with metrics.timed("orderflow_db_seconds", operation="mark_stored"):
                won = messages.mark_stored(conn, row["id"], key)
                conn.commit()
            if not won:  # a concurrent copy of this message stored it first
                _record_duplicate(conn, row, message, context)
                _log_duplicate(row, message, context)
                return Outcome.DUPLICATE
            log_event("delivery.stored", raw_storage_key=key, resumed=created is None, **context)
            metrics.count("smtp_emails_received_total", org_id=org_id, status="STORED")
            _enqueue(backends, row["id"], row["trace_id"], context, check_live=created is None)
            return Outcome.DELIVERED
        _record_duplicate(conn, row, message, context)
    if row["status"] == "STORED":
        # Raw is safe; make sure extraction was enqueued (a Redis outage may have stopped us).
        _enqueue(backends, row["id"], row["trace_id"], context, check_live=True)
    _log_duplicate(row, message, context)
    return Outcome.DUPLICATE


def _hold_for_disabled_org(
    conn: Conn, inbound_message_id: str, key: str, slug: str, context: dict[str, Any]
) -> Outcome:
    """Raw is in S3: end the row FAILED with reason org_disabled and enqueue nothing, so
    `org enable SLUG` then `reprocess --org SLUG --status FAILED` brings it back."""
    error = {
        "stage": "deliver",
        "reason": ORG_DISABLED,
        "detail": f"org {slug} was disabled when Postfix delivered this message; "
        f"`orderflow-ingest org enable {slug}` then "
        f"`orderflow-ingest reprocess --org {slug} --status FAILED` extracts it",
    }
    messages.mark_failed(conn, inbound_message_id, headertext.clean_json(error), key)
    conn.commit()
    log_event(
        "delivery.held_for_disabled_org",
        logging.WARNING,
        org_slug=slug,
        raw_storage_key=key,
        **context,
    )
    metrics.count("smtp_emails_received_total", org_id=context["org_id"], status="FAILED")
    metrics.count("smtp_processing_errors_total", org_id=context["org_id"], error_type=ORG_DISABLED)
    return Outcome.HELD_FOR_DISABLED_ORG


def _lock_existing(conn: Conn, new: messages.NewMessage) -> dict[str, Any] | None:
    """The row of the same org, Message-ID and content, locked."""
    existing = messages.find_same_content(
        conn, new.org_id, new.source_message_id, new.content_sha256 or new.sha256, new.sha256
    )
    return None if existing is None else messages.lock_message(conn, existing["id"])


def _log_conflict(row: dict[str, Any], context: dict[str, Any]) -> None:
    """Same Message-ID, other content: kept as its own message, and flagged (item 2)."""
    log_event(
        "delivery.message_id_conflict",
        logging.WARNING,
        conflict_of=row["conflict_of"],
        content_sha256=row["content_sha256"],
        **{**context, "inbound_message_id": row["id"]},
    )
    metrics.count("orderflow_message_conflicts_total", org_id=row["org_id"])


def _record_conflict(conn: Conn, row: dict[str, Any]) -> None:
    """message.conflict, in the transaction that inserts the conflicting row."""
    events.record(
        conn,
        "message.conflict",
        org_id=row["org_id"],
        trace_id=row["trace_id"],
        inbound_message_id=row["id"],
        data={"conflict_of": row["conflict_of"], "message_id": row["message_id"]},
    )


def _record_duplicate(
    conn: Conn, row: dict[str, Any], message: SpooledMessage, context: dict[str, Any]
) -> None:
    """message.duplicate for the first message; committing also ends the row lock we held."""
    events.record(
        conn,
        "message.duplicate",
        org_id=row["org_id"],
        trace_id=context["trace_id"],
        inbound_message_id=row["id"],
        data={
            "status": row["status"],
            "same_bytes": row["sha256"] == message.sha256,
            "queue_id": context.get("queue_id"),
        },
    )
    conn.commit()


def _put_raw(backends: Backends, key: str, message: SpooledMessage) -> None:
    settings = backends.settings
    message.file.seek(0)
    if message.size <= storage.MULTIPART_THRESHOLD and backends.s3_put is not None:
        backends.s3_put.put(
            settings.s3_bucket,
            key,
            message.file,
            message.size,
            message.sha256,
            "message/rfc822",
            {"sha256": message.sha256},
        )
    elif message.size <= storage.MULTIPART_THRESHOLD:
        backends.s3.put_object(
            Bucket=settings.s3_bucket,
            Key=key,
            Body=message.file,
            ContentLength=message.size,
            ContentType="message/rfc822",
            Metadata={"sha256": message.sha256},
        )
    else:
        storage.put_stream(backends.s3, settings.s3_bucket, key, message.file, "message/rfc822")


def _enqueue(
    backends: Backends, message_id: str, trace_id: str, context: dict[str, Any], check_live: bool
) -> None:
    # One Redis round trip: the job's commands in one transaction, sent by execute(), which
    # returns only once Redis has the job (the delivery answers 0 only after it).
    with backends.redis.pipeline() as pipeline:
        enqueued = enqueue_extract_attachments(
            backends.redis,
            backends.settings,
            message_id,
            trace_id,
            check_live=check_live,
            pipeline=pipeline,
        )
        pipeline.execute()
    log_event("delivery.enqueued" if enqueued else "delivery.job_already_queued", **context)


def _log_duplicate(row: dict[str, Any], message: SpooledMessage, context: dict[str, Any]) -> None:
    """FR-013: a duplicate is a WARN with Message-ID and org, and a 250, never a new row."""
    log_event(
        "delivery.duplicate",
        logging.WARNING,
        status=row["status"],
        same_bytes=row["sha256"] == message.sha256,
        first_queue_id=row["postfix_queue_id"],
        **context,
    )
    metrics.count("orderflow_duplicates_total", org_id=row["org_id"])
