"""Spec RE-004 across components: one JSON line per event, with trace_id, org_id,
Message-ID, Postfix queue id, inbound_message id and document ids as they become known, so
that one grep on the trace_id follows a message from the pipe through the RQ jobs to the
downstream extraction job (whose metadata carries it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import send_mail
from ops_support import cli, run_worker, wait_status
from samples import address, order_email

from orderflow_ingest.job_queue import attachment_job_id, document_job_id, fetch_job

pytestmark = pytest.mark.stack


def json_lines(text: str, strict: bool = True) -> list[dict[str, Any]]:
    """Every non-empty line, parsed; with `strict` a line that is not JSON fails the test.

    Not strict: tolerates lines written by something other than our logging (a crash).
    """
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if strict:
                    pytest.fail(f"line {number} is not JSON: {line[:200]!r}")
    return events


def test_third_party_warnings_are_json_lines_too() -> None:
    """A process set up like our services, a library logging a warning: still one JSON line.
    (A subprocess, because pytest's own log capture would hide where the line goes.)"""
    program = (
        "import logging\n"
        "from orderflow_ingest.logs import setup_logging\n"
        "setup_logging('INFO', '', component='deliver-service')\n"
        "logging.getLogger('psycopg.pool').warning('discarding closed connection: <x>')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (event,) = json_lines(result.stderr)
    assert event["event"] == "discarding closed connection: <x>"


def test_one_grep_on_the_trace_id_follows_a_message(stack: Any, db: Any, redis_conn: Any) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    row = wait_status(db, msg["Message-ID"], ("STORED",))
    trace_id, queue_id = row["trace_id"], row["postfix_queue_id"]
    identity = {
        "trace_id": trace_id,
        "org_id": row["org_id"],
        "message_id": row["source_message_id"],
        "inbound_message_id": row["id"],
    }

    # The delivery service: every line of its log is JSON; its lines carry the identity.
    time.sleep(0.2)  # the log line of the enqueue follows the commit the test waited for
    deliver = json_lines(stack.component_log("deliver").read_text(errors="replace"), strict=False)
    mine = [event for event in deliver if event.get("trace_id") == trace_id]
    assert {"delivery.received", "delivery.stored", "delivery.enqueued"} <= {
        event["event"] for event in mine
    }
    for event in mine:
        assert event["component"] == "deliver-service"
        for key, expected in identity.items():
            assert event.get(key) == expected, (event["event"], key)
        assert event.get("queue_id") == queue_id, event["event"]

    # The RQ job got the trace_id as an argument; its events carry it and the documents.
    job = fetch_job(redis_conn, attachment_job_id(row["id"]))
    assert job.kwargs["trace_id"] == trace_id and job.meta["trace_id"] == trace_id
    worker = run_worker(stack)
    wait_status(db, msg["Message-ID"], ("PARSED",))
    ours = [
        event
        for event in json_lines(worker.stderr)
        if event.get("trace_id") == trace_id or trace_id in event.get("event", "")
    ]
    parsed = [event for event in ours if event["event"] == "attachments.parsed"]
    assert len(parsed) == 1
    (document_id,) = parsed[0]["document_ids"]
    for event in ours:
        if not event["event"].startswith("attachments."):
            continue  # RQ's own lines name the job and its trace_id kwarg in their text
        for key, expected in identity.items():
            assert event.get(key) == expected, (event["event"], key)
        assert event.get("queue_id") == queue_id, event["event"]
    handed = [event for event in ours if event["event"] == "attachments.handed_off"]
    assert [event["document_id"] for event in handed] == [document_id]

    # The downstream extraction job (spec 009) gets the trace_id in its metadata.
    downstream = fetch_job(redis_conn, document_job_id(document_id))
    assert downstream.args == [document_id, row["org_id"]]
    assert downstream.meta["trace_id"] == trace_id

    # An operator's reprocess is logged with the same identity (warnings go to stderr
    # without a log file; with ORDERFLOW_LOG_FILE every event goes there).
    log_file = stack.base_dir / "logs" / "ops-test.log"
    result = cli(
        stack,
        "reprocess",
        trace_id,
        env={"ORDERFLOW_LOG_FILE": str(log_file), "ORDERFLOW_LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.stderr
    (event,) = [e for e in json_lines(log_file.read_text()) if e["event"] == "reprocess.enqueued"]
    assert event["component"] == "reprocess"
    for key, expected in identity.items():
        assert event.get(key) == expected, key
    assert event["queue_id"] == queue_id
    run_worker(stack)
