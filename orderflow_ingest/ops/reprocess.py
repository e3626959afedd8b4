"""`reprocess`: run attachment extraction again from the raw message kept in S3.

Reprocessing is: PARSED or FAILED -> STORED (messages.reopen_for_reprocess, the one transition
the database allows only when asked explicitly) and then the extract_attachments job again,
with the message's own trace_id so one grep still follows it. The job is idempotent
(documents are unique per message and MIME part path, and updated in place), so running it
again never duplicates a document; what it changes is reported per message.

What cannot be reprocessed is said, not silently skipped: a RECEIVED message (Postfix still
holds it and will retry the delivery), a FAILED message whose raw never reached S3, a raw
object missing from the bucket.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from rq.job import JobStatus

from orderflow_ingest import messages, metrics
from orderflow_ingest.db import Conn
from orderflow_ingest.job_queue import (
    attachment_job_id,
    enqueue_extract_attachments,
    fetch_job,
    job_is_live,
)
from orderflow_ingest.logs import log_event
from orderflow_ingest.ops import queries
from orderflow_ingest.settings import Settings

# Actions, as reported per message.
REOPEN = "reopen"  # PARSED/FAILED -> STORED + job
ENQUEUE = "enqueue"  # already STORED, no live job: job only
SKIP = "skip"  # nothing to do, or impossible (the reason says which)
ERROR = "error"
IMPOSSIBLE = "impossible"
FINAL_JOB_STATES = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


@dataclass
class Step:
    """One message: what was (or would be) done, and, after --wait, what came of it."""

    inbound_message_id: str
    org: str
    message_id: str | None
    status_before: str
    action: str
    reason: str
    documents_before: int
    done: bool = False
    status_after: str | None = None
    documents_after: int | None = None
    job_status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    """Which messages the operator asked for: identifiers, narrowed by the other options, or
    a selection by org, status and time when there are none."""

    identifiers: tuple[str, ...] = ()
    org: str | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def names_nothing(self) -> bool:
        return not (self.identifiers or self.org or self.statuses or self.since or self.until)


def parse_statuses(values: Iterable[str]) -> tuple[str, ...]:
    """--status values (repeatable, or comma-separated), upper-cased; ValueError naming the
    first one reprocessing cannot select."""
    statuses = tuple(
        part.strip().upper() for value in values for part in value.split(",") if part.strip()
    )
    bad = [status for status in statuses if status not in queries.REPROCESSABLE]
    if bad:
        *most, last = queries.REPROCESSABLE
        raise ValueError(f"--status {bad[0]}: use {', '.join(most)} or {last}")
    return statuses


def select(conn: Conn, request: Request) -> tuple[list[dict[str, Any]], list[str]]:
    """(the messages `request` names, in order; the identifiers that matched none).

    Without identifiers the selection covers every reprocessable status unless --status says
    otherwise; the reprocessing itself still says why a RECEIVED one cannot be redone."""
    if not request.identifiers:
        selection = queries.Selection(
            org_slug=request.org,
            statuses=request.statuses or queries.REPROCESSABLE,
            since=request.since,
            until=request.until,
            limit=request.limit,
        )
        return queries.select_messages(conn, selection), []
    rows: dict[str, dict[str, Any]] = {}
    unmatched: list[str] = []
    for identifier in request.identifiers:
        found = queries.resolve(conn, identifier, request.org).messages
        if not found:
            unmatched.append(identifier)
        rows.update((row["id"], row) for row in found)
    selected = [
        row
        for row in rows.values()
        if (not request.statuses or row["status"] in request.statuses)
        and (request.since is None or row["received_at"] >= request.since)
        and (request.until is None or row["received_at"] < request.until)
    ][: request.limit]
    return selected, unmatched


def raw_exists(s3: Any, bucket: str, key: str) -> bool:
    """HEAD the raw object: reopening a message whose raw is gone would only fail again."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def plan(row: dict[str, Any], redis: Any, s3: Any, settings: Settings) -> tuple[str, str]:
    """(action, reason) for one message, without changing anything."""
    status = row["status"]
    if status == "RECEIVED":
        return IMPOSSIBLE, (
            "RECEIVED: the raw message is not safe in S3 yet; Postfix still holds it"
            f" (queue id {row['postfix_queue_id'] or '?'}) and its retry resumes this row"
        )
    if not row["raw_storage_key"]:
        return IMPOSSIBLE, (
            f"{status} without a stored raw message (it failed before reaching S3):"
            " nothing to reprocess from; the sender must send it again"
        )
    if job_is_live(redis, attachment_job_id(row["id"])):
        return SKIP, "extraction job already queued or running"
    if not raw_exists(s3, settings.s3_bucket, row["raw_storage_key"]):
        return IMPOSSIBLE, (
            f"raw object {row['raw_storage_key']} is missing from bucket {settings.s3_bucket}"
        )
    if status == "STORED":
        return ENQUEUE, "STORED with no live job: enqueue extraction"
    return REOPEN, f"{status} -> STORED, enqueue extraction"


def reopen(conn: Conn, row: dict[str, Any]) -> None:
    """PARSED/FAILED -> STORED in its own transaction; raises _Changed if it moved on."""
    try:
        if queries.lock_if_status(conn, row["id"], row["status"]) is None:
            raise _Changed("its status changed, or a job is working on it right now")
        if not messages.reopen_for_reprocess(conn, row["id"], _reason()):
            raise _Changed("the database refused to reopen it")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _reason() -> str:
    """Kept with the reopened message (its status history): who reprocessed it."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid
        user = str(os.getuid())
    return f"orderflow-ingest reprocess by {user}"


class _Changed(Exception):
    """The message moved on between planning and acting."""


def _log_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "inbound_message_id": row["id"],
        "trace_id": row["trace_id"],
        "org_id": row["org_id"],
        "message_id": row["message_id"],
        "queue_id": row["postfix_queue_id"],
    }


def reprocess(
    conn: Conn,
    redis: Any,
    s3: Any,
    settings: Settings,
    rows: list[dict[str, Any]],
    dry_run: bool,
    progress: Callable[[Step], None] = lambda step: None,
) -> list[Step]:
    """Plan and (unless dry_run) carry out reprocessing of `rows`, in order."""
    counts = queries.document_counts(conn, [row["id"] for row in rows])
    conn.commit()
    steps: list[Step] = []
    for row in rows:
        step = Step(
            inbound_message_id=row["id"],
            org=row["org_slug"],
            message_id=row["message_id"],
            status_before=row["status"],
            action=SKIP,
            reason="",
            documents_before=counts.get(row["id"], 0),
        )
        reopened = False
        try:
            step.action, step.reason = plan(row, redis, s3, settings)
            if not dry_run and step.action in (REOPEN, ENQUEUE):
                if step.action == REOPEN:
                    reopen(conn, row)
                    reopened = True
                enqueued = enqueue_extract_attachments(redis, settings, row["id"], row["trace_id"])
                step.reason += ": job enqueued" if enqueued else ": job was already queued"
                step.done = True
                log_event(
                    "reprocess.enqueued",
                    previous_status=row["status"],
                    action=step.action,
                    **_log_fields(row),
                )
                metrics.count("orderflow_reprocess_total", previous_status=row["status"])
        except _Changed as changed:
            step.action, step.reason = SKIP, f"left alone: {changed}"
        except Exception as error:
            step.action = ERROR
            step.reason = f"{type(error).__name__}: {str(error)[:200]}"
            if reopened:
                step.reason += " (reopened to STORED; `sweep` enqueues its job later)"
            log_event(
                "reprocess.error",
                logging.ERROR,
                error_type=type(error).__name__,
                error=str(error)[:300],
                reopened=reopened,
                **_log_fields(row),
            )
        steps.append(step)
        progress(step)
    return steps


def wait_for_jobs(
    redis: Any,
    conn: Conn,
    steps: list[Step],
    timeout: float,
    progress: Callable[[Step], None] = lambda step: None,
    poll: float = 0.25,
) -> bool:
    """Wait for the jobs of the steps that enqueued one; fill in what came of each.

    Returns False if a job did not finish in time or failed.
    """
    pending = {step.inbound_message_id: step for step in steps if step.done}
    deadline = time.monotonic() + timeout
    ok = True
    while pending and time.monotonic() < deadline:
        for message_id, step in list(pending.items()):
            status = _job_status(redis, attachment_job_id(message_id))
            if status in FINAL_JOB_STATES or status is None:
                step.job_status = status.value if status is not None else "missing"
                del pending[message_id]
                progress(step)
        if pending:
            time.sleep(poll)
    for step in pending.values():
        step.job_status = "timeout"
        ok = False
    done = [step for step in steps if step.done]
    if done:
        ids = [step.inbound_message_id for step in done]
        counts = queries.document_counts(conn, ids)
        statuses = queries.statuses_of(conn, ids)
        conn.commit()
        for step in done:
            step.documents_after = counts.get(step.inbound_message_id, 0)
            step.status_after = statuses.get(step.inbound_message_id)
            if step.job_status != JobStatus.FINISHED.value:
                ok = False
    return ok


def _job_status(redis: Any, job_id: str) -> JobStatus | None:
    try:
        return fetch_job(redis, job_id).get_status()
    except Exception:
        return None


def summary(steps: Iterable[Step], dry_run: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for step in steps:
        key = (
            step.action
            if not dry_run or step.action not in (REOPEN, ENQUEUE)
            else ("would_" + step.action)
        )
        counts[key] = counts.get(key, 0) + 1
    return counts


# How the totals line names each action (reprocess's own words; others as they are).
_TOTAL_WORDS = {
    REOPEN: "reopened",
    ENQUEUE: "enqueued",
    SKIP: "skipped",
    IMPOSSIBLE: "cannot be reprocessed",
    ERROR: "failed",
}


def totals_line(steps: list[Step], totals: dict[str, int]) -> str:
    """`3 message(s): 1 reopened, 2 skipped` (the last line of the text output)."""
    parts = [
        f"{count} {_TOTAL_WORDS.get(name, name.replace('_', ' '))}"
        for name, count in sorted(totals.items())
    ]
    return f"{len(steps)} message(s): " + (", ".join(parts) or "nothing selected")


def has_problems(steps: Iterable[Step]) -> bool:
    """Whether any message could not be reprocessed (the command then exits 1)."""
    return any(step.action in (ERROR, IMPOSSIBLE) for step in steps)


def describe(step: Step, dry_run: bool) -> str:
    """One line per message for the text output."""
    head = f"{step.inbound_message_id}  {step.org:<12} {step.status_before:<8}"
    if step.action in (REOPEN, ENQUEUE):
        verb = "would " + step.action if dry_run else step.action
        line = f"{head} {verb}: {step.reason}"
    else:
        line = f"{head} {step.action}: {step.reason}"
    if step.status_after is not None:
        line += (
            f"\n    -> now {step.status_after}, documents {step.documents_before}"
            f" -> {step.documents_after} (job {step.job_status})"
        )
    elif step.job_status is not None:
        line += f"\n    -> job {step.job_status}"
    return line
