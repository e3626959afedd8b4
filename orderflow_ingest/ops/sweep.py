"""`sweep`: find messages stuck before PARSED and get them moving again; run from a timer.

- STORED for longer than the threshold with no live extraction job: the raw message is safe
  in S3 but its job was lost (Redis restarted without persistence, a crash between commit and
  enqueue) or ran out of retries. Re-enqueue it (deterministic job id, idempotent job).
  A message whose job keeps failing is quarantined after `max_attempts` sweeps: marked FAILED
  with the last error, so it stops holding the ingest lag up and `reprocess` can replay it once
  the cause is fixed (Mailman's shunt queue, in our state machine).
- RECEIVED for longer than the threshold: the raw message is not known to be in S3, so there
  is nothing to enqueue. Postfix still holds the message (its delivery did not exit 0) and
  retries it; the retry resumes the row. Reported with whether the queue id is still in this
  host's Postfix queue — if it is not, a human should look.

Idempotent and safe from several hosts at once: every action happens under the row lock
(SKIP LOCKED, so a running job is never waited on) after re-checking the status and the job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from rq.job import JobStatus

from orderflow_ingest import messages, metrics
from orderflow_ingest.db import Conn
from orderflow_ingest.job_queue import (
    LIVE_STATES,
    attachment_job_id,
    enqueue_extract_attachments,
    fetch_job,
)
from orderflow_ingest.logs import log_event
from orderflow_ingest.ops import postfix_queue, queries
from orderflow_ingest.ops.timeparse import human_duration
from orderflow_ingest.settings import Settings

ATTEMPTS_KEY = "orderflow:sweep:attempts:{}"
ATTEMPTS_TTL = 7 * 86400
DEFAULT_OLDER_THAN = timedelta(minutes=15)
DEFAULT_MAX_ATTEMPTS = 3
BATCH_LIMIT = 5000

REENQUEUED = "reenqueued"
QUARANTINED = "quarantined"
WAITING = "waiting"  # a job is queued or running: workers are behind, nothing to do
BUSY = "busy"  # a job holds the row lock right now
REPORTED = "reported"  # RECEIVED: Postfix's retry resumes it
WOULD_REENQUEUE = "would_reenqueue"
WOULD_QUARANTINE = "would_quarantine"
ERROR = "error"


@dataclass
class Finding:
    inbound_message_id: str
    org: str
    status: str
    stuck_seconds: float
    postfix_queue_id: str | None
    action: str
    reason: str
    job_state: str | None = None
    in_postfix_queue: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line per message for the text output."""
        return (
            f"{self.inbound_message_id}  {self.org:<12} {self.status:<8}"
            f" stuck {human_duration(self.stuck_seconds):>8}  {self.action}: {self.reason}"
        )


def job_state(redis: Any, job_id: str) -> tuple[str, str | None]:
    """(state, last error line) of a job; state 'missing' when RQ has no such job."""
    try:
        job = fetch_job(redis, job_id)
    except Exception:  # NoSuchJobError, or a hash we cannot read: treat as lost
        return "missing", None
    status = job.get_status(refresh=False)
    error = None
    if status == JobStatus.FAILED:
        result = job.latest_result()
        text = (result.exc_string if result is not None else None) or job.exc_info or ""
        lines = [line for line in str(text).strip().splitlines() if line.strip()]
        error = lines[-1][:300] if lines else None
    return (status.value if status is not None else "missing"), error


def _attempts(redis: Any, message_id: str, increment: bool) -> int:
    key = ATTEMPTS_KEY.format(message_id)
    if not increment:
        return int(redis.get(key) or 0)
    pipe = redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, ATTEMPTS_TTL)
    count, _ = pipe.execute()
    return int(count)


def _log_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "inbound_message_id": row["id"],
        "trace_id": row["trace_id"],
        "org_id": row["org_id"],
        "message_id": row["message_id"],
        "queue_id": row["postfix_queue_id"],
    }


def sweep_stored(
    conn: Conn,
    redis: Any,
    settings: Settings,
    row: dict[str, Any],
    dry_run: bool,
    max_attempts: int,
) -> tuple[str, str, str | None]:
    """(action, reason, job state) for one STORED message."""
    job_id = attachment_job_id(row["id"])
    state, error = job_state(redis, job_id)
    if state in {s.value for s in LIVE_STATES}:
        return WAITING, f"job {state}: the workers are behind, not stuck", state
    cause = "job lost (not in RQ)" if state == "missing" else f"job {state}"
    if error:
        cause += f": {error}"
    attempts = _attempts(redis, row["id"], increment=False)
    quarantine = state == JobStatus.FAILED.value and attempts >= max_attempts
    if dry_run:
        if quarantine:
            return WOULD_QUARANTINE, f"{cause}; swept {attempts} times already", state
        return WOULD_REENQUEUE, cause, state
    try:
        if queries.lock_if_status(conn, row["id"], "STORED") is None:
            conn.rollback()
            return BUSY, "a job is working on it right now, or it moved on", state
        # Re-check under the lock: a job may have been enqueued since we looked.
        state, error = job_state(redis, job_id)
        if state in {s.value for s in LIVE_STATES}:
            conn.rollback()
            return WAITING, f"job {state}", state
        quarantine = state == JobStatus.FAILED.value and attempts >= max_attempts
        if quarantine:
            messages.mark_failed(
                conn,
                row["id"],
                {
                    "stage": "sweep",
                    "reason": f"extraction failed after {attempts} sweeps",
                    "last_error": error,
                },
            )
            conn.commit()
            log_event(
                "sweep.quarantined",
                logging.ERROR,
                attempts=attempts,
                error=error,
                **_log_fields(row),
            )
            metrics.count(
                "smtp_processing_errors_total", org_id=row["org_id"], error_type="quarantined"
            )
            return QUARANTINED, f"{cause}; FAILED after {attempts} sweeps (reprocess it)", state
        enqueue_extract_attachments(redis, settings, row["id"], row["trace_id"], check_live=False)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    count = _attempts(redis, row["id"], increment=True)
    log_event(
        "sweep.reenqueued", logging.WARNING, job_state=state, attempt=count, **_log_fields(row)
    )
    return REENQUEUED, f"{cause}; re-enqueued (sweep {count})", state


def received_reason(row: dict[str, Any], in_queue: bool | None) -> str:
    base = "raw message not safe in S3 yet; nothing to enqueue"
    if in_queue is True:
        return f"{base}: Postfix holds it ({row['postfix_queue_id']}) and its retry resumes it"
    if in_queue is False:
        return (
            f"{base}, and queue id {row['postfix_queue_id'] or '?'} is not in this host's"
            " Postfix queue: delivered from another MX host, or lost - look at its trace"
        )
    return f"{base}: Postfix retries it (queue not checked)"


def sweep(
    conn: Conn,
    redis: Any,
    settings: Settings,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    dry_run: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    check_postfix: bool = True,
) -> list[Finding]:
    rows = queries.stuck_messages(conn, older_than, BATCH_LIMIT)
    conn.commit()
    received_ids = {
        row["postfix_queue_id"]
        for row in rows
        if row["status"] == "RECEIVED" and row["postfix_queue_id"]
    }
    queued: dict[str, postfix_queue.QueueEntry] | None = None
    if received_ids and check_postfix:
        try:
            queued = postfix_queue.find_queue_ids(settings.postfix_config_dir, received_ids)
        except postfix_queue.PostqueueError as error:
            log_event("sweep.postqueue_failed", logging.WARNING, error=str(error))
    findings: list[Finding] = []
    for row in rows:
        finding = Finding(
            inbound_message_id=row["id"],
            org=row["org_slug"],
            status=row["status"],
            stuck_seconds=row["stuck_seconds"],
            postfix_queue_id=row["postfix_queue_id"],
            action=REPORTED,
            reason="",
        )
        if row["status"] == "RECEIVED":
            in_queue = None if queued is None else row["postfix_queue_id"] in queued
            finding.in_postfix_queue = in_queue
            finding.reason = received_reason(row, in_queue)
            log_event(
                "sweep.received_stuck",
                logging.WARNING,
                in_postfix_queue=in_queue,
                **_log_fields(row),
            )
        else:
            try:
                finding.action, finding.reason, finding.job_state = sweep_stored(
                    conn, redis, settings, row, dry_run, max_attempts
                )
            except Exception as error:
                finding.action = ERROR
                finding.reason = f"{type(error).__name__}: {str(error)[:200]}"
                log_event(
                    "sweep.error",
                    logging.ERROR,
                    error_type=type(error).__name__,
                    error=str(error)[:300],
                    **_log_fields(row),
                )
        if not dry_run:
            metrics.count("orderflow_sweep_total", action=finding.action)
        findings.append(finding)
    return findings


def totals_line(totals: dict[str, int]) -> str:
    """`1 reenqueued, 2 waiting` (the last line of the text output)."""
    return ", ".join(f"{count} {name}" for name, count in sorted(totals.items()))


def totals(findings: list[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.action] = counts.get(finding.action, 0) + 1
    return counts
