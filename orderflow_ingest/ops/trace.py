"""`show` / `trace`: the whole story of a message from whatever id the operator has in hand.

Message-ID, Postfix queue id, trace_id, inbound_message id or document id -> envelope, org,
the milter's authentication verdicts, the status history, the S3 objects, each document and
why every other part is not one, the RQ jobs, and the Postfix log lines of its queue id.
Every backend is asked separately: one that is down makes its section say so, it does not
hide the rest of the story.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime
from typing import Any

from orderflow_ingest import documents, messages
from orderflow_ingest.db import Conn
from orderflow_ingest.job_queue import attachment_job_id, document_job_id, fetch_job
from orderflow_ingest.ops import postfix_queue, queries
from orderflow_ingest.ops.terminal import safe_data
from orderflow_ingest.ops.timeparse import human_duration
from orderflow_ingest.settings import Settings

DEBIAN_MAILLOG = "/var/log/mail.log"
MAX_LOG_LINES = 200


def job_info(redis: Any, job_id: str) -> dict[str, Any]:
    """An RQ job's state; 'missing' once its result TTL has passed (or if never enqueued)."""
    try:
        job = fetch_job(redis, job_id)
    except Exception:
        return {"id": job_id, "status": "missing"}
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {
        "id": job_id,
        "status": status.value if status is not None else "unknown",
        "queue": job.origin,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "retries_left": job.retries_left,
        "trace_id": job.meta.get("trace_id"),
    }
    result = job.latest_result()
    if result is not None:
        if result.exc_string:
            lines = [line for line in result.exc_string.strip().splitlines() if line.strip()]
            info["error"] = lines[-1][:300] if lines else None
        elif result.return_value is not None:
            info["result"] = result.return_value
    return info


def raw_object(s3: Any, bucket: str, key: str | None) -> dict[str, Any]:
    if not key:
        return {"key": None, "present": False}
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return {"key": key, "present": False}
        raise
    return {
        "key": key,
        "present": True,
        "size_bytes": head.get("ContentLength"),
        "sha256": (head.get("Metadata") or {}).get("sha256"),
    }


def maillog_path(config_dir: str) -> str:
    """Postfix's own maillog_file when it writes one, else Debian's syslog file."""
    try:
        result = subprocess.run(
            ["postconf", "-c", config_dir, "-h", "maillog_file"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        configured = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        configured = ""
    return configured or DEBIAN_MAILLOG


def maillog_lines(path: str, queue_ids: set[str], since: datetime | None = None) -> dict[str, Any]:
    """Lines of the maillog (and its first rotation, if recent enough) naming the queue ids."""
    if not queue_ids:
        return {"path": path, "lines": []}
    needles = [f" {queue_id}: ".encode() for queue_id in queue_ids]
    files = [path]
    rotated = path + ".1"
    try:
        if since is None or os.path.getmtime(rotated) >= since.timestamp():
            files.insert(0, rotated)
    except OSError:
        pass
    lines: list[str] = []
    errors: list[str] = []
    for name in files:
        try:
            with open(name, "rb") as handle:
                for line in handle:
                    if any(needle in line for needle in needles):
                        lines.append(line.decode("utf-8", "replace").rstrip("\n"))
                        if len(lines) >= MAX_LOG_LINES:
                            break
        except FileNotFoundError:
            if name == path:
                errors.append(f"{name}: not found")
        except OSError as error:
            errors.append(f"{name}: {error.strerror}")
    story: dict[str, Any] = {"path": path, "lines": lines}
    if errors:
        story["error"] = "; ".join(errors)
    return story


MESSAGE_ID_LINE = re.compile(rb" ([0-9A-Za-z]{6,32}): message-id=(<[^>\s]*>)")


def queue_ids_for_message_id(path: str, message_id: str) -> set[str]:
    """Queue ids whose cleanup(8) line logged this Message-ID (current log and .1)."""
    wanted = message_id.encode("utf-8", "replace")
    found: set[str] = set()
    for name in (path + ".1", path):
        try:
            with open(name, "rb") as handle:
                for line in handle:
                    if b"message-id=" not in line:
                        continue
                    match = MESSAGE_ID_LINE.search(line)
                    if match and match.group(2) == wanted:
                        found.add(match.group(1).decode())
        except OSError:
            continue
    return found


def postfix_story(
    settings: Settings, identifier: str, kind: str, maillog: str | None
) -> dict[str, Any] | None:
    """For mail not in the database yet (deferred, or still being delivered): what Postfix
    knows of it, from its queue and its log. None when Postfix knows nothing either."""
    path = maillog or maillog_path(settings.postfix_config_dir)
    if kind == "queue_id":
        queue_ids = {identifier}
    elif kind == "message_id":
        bracketed = identifier if identifier.startswith("<") else f"<{identifier}>"
        queue_ids = queue_ids_for_message_id(path, bracketed)
    else:
        return None
    if not queue_ids:
        return None
    in_queue = _section(
        lambda: postfix_queue.find_queue_ids(settings.postfix_config_dir, queue_ids)
    )
    entries: dict[str, Any] = {}
    for queue_id in sorted(queue_ids):
        if isinstance(in_queue, dict) and "error" in in_queue:
            state: Any = in_queue
        else:
            entry = in_queue.get(queue_id)
            state = entry.as_dict() if entry is not None else None
        entries[queue_id] = {"in_queue": state, "maillog": maillog_lines(path, {queue_id})}
    if all(e["in_queue"] is None and not e["maillog"]["lines"] for e in entries.values()):
        return None
    return {"identifier": identifier, "in_database": False, "postfix": entries}


def render_postfix_text(data: dict[str, Any]) -> str:
    data = safe_data(data)  # sender-chosen text never reaches the terminal raw
    lines = [
        f"{data['identifier']}: not in the database (yet); what Postfix knows of it:",
    ]
    for queue_id, entry in data["postfix"].items():
        lines.extend(_postfix_lines({"queue_id": queue_id, **entry}))
    return "\n".join(lines)


def _section(build: Any) -> Any:
    """Run one section; a backend fault becomes {'error': ...} instead of ending the story."""
    try:
        return build()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}


def story(
    conn: Conn,
    redis: Any,
    s3: Any,
    settings: Settings,
    row: dict[str, Any],
    maillog: str | None,
    postfix: bool = True,
) -> dict[str, Any]:
    """Everything known about one inbound_message row, as JSON-ready data."""
    message_id = row["id"]
    docs = documents.documents_for_message(conn, message_id)
    parts = documents.parts_for_message(conn, message_id)
    events = queries.history(conn, message_id)
    conflicts = [
        {key: other[key] for key in ("id", "status", "received_at", "conflict_of")}
        for other in messages.message_id_conflicts(conn, message_id)
    ]
    conn.commit()
    jobs: dict[str, Any] = {
        "extract_attachments": _section(lambda: job_info(redis, attachment_job_id(message_id)))
    }
    document_list = []
    for doc in docs:
        entry = dict(doc)
        entry["job"] = _section(lambda doc=doc: job_info(redis, document_job_id(doc["id"])))
        document_list.append(entry)
    queue_id = row["postfix_queue_id"]
    postfix_story: dict[str, Any] = {"queue_id": queue_id}
    if postfix and queue_id:
        in_queue = _section(
            lambda: postfix_queue.find_queue_ids(settings.postfix_config_dir, {queue_id})
        )
        postfix_story["in_queue"] = (
            in_queue
            if isinstance(in_queue, dict) and "error" in in_queue
            else (in_queue[queue_id].as_dict() if queue_id in in_queue else None)
        )
        path = maillog or maillog_path(settings.postfix_config_dir)
        postfix_story["maillog"] = maillog_lines(path, {queue_id}, row["received_at"])
    return {
        "in_database": True,
        "inbound_message": {
            key: row[key]
            for key in (
                "id",
                "status",
                "source",
                "source_message_id",
                "message_id",
                "message_id_synthetic",
                "from_email",
                "to_email",
                "subject",
                "received_at",
                "size_bytes",
                "sha256",
                "trace_id",
                "error_json",
                "created_at",
                "updated_at",
            )
        },
        "org": {
            "id": row["org_id"],
            "slug": row["org_slug"],
            "name": row["org_name"],
            "status": row["org_status"],
        },
        "envelope": {
            "sender": row["envelope_sender"],
            "recipient": row["envelope_recipient"],
            "postfix_queue_id": queue_id,
        },
        "auth_results": row["auth_results"],
        # Same org and Message-ID, other content (issue 10 item 2): kept, linked, flagged.
        "message_id_conflicts": conflicts,
        "history": events,
        "storage": {
            "bucket": settings.s3_bucket,
            "raw": _section(lambda: raw_object(s3, settings.s3_bucket, row["raw_storage_key"])),
            "documents": [doc["storage_key"] for doc in docs],
        },
        "documents": document_list,
        "parts": parts,
        "jobs": jobs,
        "postfix": postfix_story,
    }


# --- Text rendering ---------------------------------------------------------------------


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().isoformat(timespec="milliseconds")
    return "-" if value is None else str(value)


def _verdict(value: Any) -> str:
    """`pass (header.d=example.org)` from {'result': 'pass', 'header.d': 'example.org'}."""
    if not isinstance(value, dict):
        return "none" if value is None else str(value)
    details = ", ".join(f"{key}={val}" for key, val in value.items() if key != "result")
    return f"{value.get('result', '?')}" + (f" ({details})" if details else "")


def _auth_line(auth: Any) -> str:
    """The milter's verdicts (Authentication-Results with our authserv-id), one per method."""
    if not auth:
        return "none recorded (milter off, or no Authentication-Results of ours)"
    if not isinstance(auth, dict):
        return str(auth)
    parts = [f"spf={_verdict(auth.get('spf'))}"]
    dkim = auth.get("dkim") or []
    dkim_list = dkim if isinstance(dkim, list) else [dkim]
    parts.append("dkim=" + ("; ".join(_verdict(item) for item in dkim_list) or "none"))
    parts.append(f"dmarc={_verdict(auth.get('dmarc'))}")
    by = f"  [by {auth['authserv_id']}]" if auth.get("authserv_id") else ""
    return "\n               ".join(parts) + by


def _job_line(job: dict[str, Any]) -> str:
    if "error" in job and "status" not in job:
        return f"unknown ({job['error']})"
    line = f"{job['status']}"
    if job.get("ended_at") and job.get("started_at"):
        seconds = (job["ended_at"] - job["started_at"]).total_seconds()
        line += f" in {seconds:.2f}s"
    if job.get("ended_at"):
        line += f" at {_when(job['ended_at'])}"
    elif job.get("enqueued_at"):
        line += f", enqueued {_when(job['enqueued_at'])}"
    if job.get("error"):
        line += f" - {job['error']}"
    if job["status"] == "missing":
        line += " (never enqueued, or its result expired)"
    return line


def _quoted(text: str | None) -> str:
    """A (terminal-safe) string in quotes, None as None: repr() would double the escapes."""
    return "None" if text is None else f"'{text}'"


def render_text(data: dict[str, Any]) -> str:
    data = safe_data(data)  # Subject, Message-ID, filenames: never raw on the terminal
    message = data["inbound_message"]
    org = data["org"]
    envelope = data["envelope"]
    lines = [
        f"inbound_message {message['id']}  {message['status']}",
        f"  org          {org['slug']} ({org['name']}, {org['status']})  {org['id']}",
        f"  Message-ID   {message['message_id']}"
        + ("  (synthetic)" if message["message_id_synthetic"] else ""),
        f"  subject      {_quoted(message['subject'])}",
        f"  from         {message['from_email']}   to {message['to_email']}",
        f"  envelope     MAIL FROM <{envelope['sender']}>  RCPT TO <{envelope['recipient']}>",
        f"  queue id     {envelope['postfix_queue_id'] or '-'}",
        f"  trace_id     {message['trace_id']}",
        f"  received     {_when(message['received_at'])}  {message['size_bytes']} bytes"
        f"  sha256 {message['sha256']}",
        f"  auth         {_auth_line(data['auth_results'])}",
    ]
    if message["error_json"]:
        lines.append(f"  error        {message['error_json']}")
    for other in data.get("message_id_conflicts", []):
        role = "a later copy" if other["conflict_of"] else "the first one"
        lines.append(
            f"  same Message-ID, other content: {other['id']}  {other['status']}"
            f"  {_when(other['received_at'])}  ({role})"
        )
    lines.append("history")
    previous = None
    for event in data["history"]:
        delta = ""
        if previous is not None:
            seconds = (event["at"] - previous).total_seconds()
            delta = f"  (+{seconds:.2f}s)" if seconds < 60 else f"  (+{human_duration(seconds)})"
        lines.append(f"  {_when(event['at'])}  {event['status']}{delta}")
        if event.get("error_json"):
            lines.append(f"      {event['error_json']}")
        previous = event["at"]
    storage = data["storage"]
    raw = storage["raw"]
    lines.append(f"storage (bucket {storage['bucket']})")
    if "error" in raw:
        lines.append(f"  raw          unknown: {raw['error']}")
    elif raw.get("key"):
        state = f"{raw.get('size_bytes')} bytes" if raw["present"] else "MISSING from the bucket"
        lines.append(f"  raw          {raw['key']}  {state}")
    else:
        lines.append("  raw          none stored")
    jobs = data["jobs"]
    lines.append("jobs")
    lines.append(f"  extract_attachments  {_job_line(jobs['extract_attachments'])}")
    lines.append(f"documents ({len(data['documents'])})")
    for doc in data["documents"]:
        decision = doc.get("decision_json") or {}
        lines.append(
            f"  {doc['part_path']:<8} {doc['status']:<7} {_quoted(doc['file_name'])}"
            f" {doc['mime_type']}"
            f" {doc['size_bytes']} bytes  {doc['id']}"
        )
        lines.append(f"           key {doc['storage_key']}")
        if decision.get("reason"):
            lines.append(f"           why {decision['reason']}")
        lines.append(f"           extract_document job {_job_line(doc['job'])}")
    if data["parts"]:
        lines.append(f"other parts ({len(data['parts'])})")
        for part in data["parts"]:
            lines.append(
                f"  {part['part_path']:<8} {part['decision']:<14} {part['content_type'] or '-':<26}"
                f" {part['reason']}"
            )
    postfix = data["postfix"]
    if "maillog" in postfix:
        lines.extend(_postfix_lines(postfix))
    return "\n".join(lines)


def _postfix_lines(postfix: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    in_queue = postfix.get("in_queue")
    if isinstance(in_queue, dict) and "error" in in_queue and "queue_name" not in in_queue:
        queue_state = f"unknown ({in_queue['error']})"
    elif in_queue:
        reasons = {r["delay_reason"] for r in in_queue["recipients"] if r["delay_reason"]}
        queue_state = f"in the {in_queue['queue_name']} queue" + (
            f": {'; '.join(sorted(reasons))}" if reasons else ""
        )
    else:
        queue_state = "no longer in this host's queue"
    lines.append(f"postfix {postfix['queue_id']}: {queue_state}")
    log = postfix["maillog"]
    if log.get("error"):
        lines.append(f"  maillog {log['path']}: {log['error']}")
    lines.extend(f"  {line}" for line in log["lines"])
    if not log["lines"] and not log.get("error"):
        lines.append(f"  no lines for {postfix['queue_id']} in {log['path']}")
    return lines


def raw_key(conn: Conn, resolved: queries.Resolved, identifier: str) -> str:
    """The S3 key `raw IDENTIFIER` streams: the document's file for a document id, else the
    one matching message's raw .eml; LookupError saying why there is none to stream."""
    if resolved.document_id is not None:
        document = documents.get_document(conn, resolved.document_id)
        key = document["storage_key"] if document else None
    elif len(resolved.messages) > 1:
        choices = ", ".join(f"{r['id']} ({r['org_slug']})" for r in resolved.messages)
        raise LookupError(f"{identifier!r} matches {len(resolved.messages)} messages: {choices}")
    elif not resolved.messages:
        raise LookupError(f"no message matches {identifier!r}")
    else:
        key = resolved.messages[0]["raw_storage_key"]
    if not key:
        raise LookupError(
            f"{identifier!r} has no stored raw message (it failed before reaching S3)"
        )
    return str(key)


def stream_object(s3: Any, bucket: str, key: str, out: Any, chunk: int = 64 * 1024) -> int:
    """Copy an S3 object to a binary stream, chunk by chunk; returns the bytes written."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    written = 0
    try:
        for block in iter(lambda: body.read(chunk), b""):
            out.write(block)
            written += len(block)
    finally:
        body.close()
    out.flush()
    return written
