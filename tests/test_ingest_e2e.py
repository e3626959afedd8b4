"""The ingest path end to end (issue 2): SMTP to the stack's Postfix → pipe transport →
delivery service → S3 + PostgreSQL + RQ. Spec user stories 1, 2 and 4 by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import smtplib
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job
from samples import INGEST_DOMAIN, address, order_email
from support_wait import wait_for

from orderflow_ingest.job_queue import SERIALIZER, attachment_job_id

pytestmark = pytest.mark.stack


def rows_for(db: Any, message_id: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT m.*, m.id::text AS id, m.org_id::text AS org_id, o.slug::text AS slug"
        " FROM inbound_message m JOIN org o ON o.id = m.org_id"
        " WHERE message_id = %s ORDER BY o.slug",
        (message_id,),
    ).fetchall()


def stored(db: Any, message_id: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        rows = rows_for(db, message_id)
        done = [row for row in rows if row["status"] in ("STORED", "PARSED")]
        return rows if len(done) >= count else None

    return wait_for(check, timeout, f"{count} stored row(s) for {message_id}")  # type: ignore[no-any-return]


def log_events(stack: Any, event: str) -> list[dict[str, Any]]:
    lines = stack.component_log("deliver").read_text(errors="replace").splitlines()
    events = []
    for line in lines:
        if f'"{event}"' in line:
            events.append(json.loads(line))
    return events


def org_id(db: Any, slug: str) -> str:
    return db.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()["id"]


# --- User story 1: receive orders via email -------------------------------------------------


def test_us1_scenario1_email_with_pdf_is_received_and_stored(stack, db, s3, send_mail) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    (row,) = stored(db, msg["Message-ID"])
    assert row["raw_storage_key"] == f"raw/{row['org_id']}/{row['id']}.eml"
    raw = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"].read()
    assert msg["Message-ID"].encode() in raw
    assert b"PO-4711.pdf" in raw
    assert row["size_bytes"] == len(raw)
    assert row["sha256"] == hashlib.sha256(raw).hexdigest()
    assert row["from_email"] == "buyer@customer.example"
    assert row["subject"] == msg["Subject"]
    assert row["envelope_recipient"] == address("acme")
    assert row["postfix_queue_id"]


def test_us1_scenario2_row_is_created_received_then_stored(stack, db, send_mail) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    (row,) = stored(db, msg["Message-ID"])
    history = db.execute(
        "SELECT status FROM inbound_message_event WHERE inbound_message_id = %s ORDER BY id",
        (row["id"],),
    ).fetchall()
    assert [h["status"] for h in history][:2] == ["RECEIVED", "STORED"]
    assert row["source"] == "EMAIL"


def test_extraction_job_is_queued_with_a_deterministic_id(stack, db, redis_conn, send_mail) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    (row,) = stored(db, msg["Message-ID"])
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn, serializer=SERIALIZER)
    assert job.func_name == "orderflow_ingest.jobs.attachments.extract_attachments"
    assert job.args == [row["id"]]  # JSON, not pickle
    assert job.kwargs.get("trace_id") == row["trace_id"]
    assert job.origin == stack.settings.attachment_queue


# --- User story 2: plus-addressing for org routing ------------------------------------------


def test_us2_scenario1_plus_address_routes_to_the_org(stack, db, send_mail) -> None:
    first, second = order_email(to=address("acme")), order_email(to=address("globex"))
    send_mail(stack, first, [address("acme")])
    send_mail(stack, second, [address("globex")])
    (acme_row,) = stored(db, first["Message-ID"])
    (globex_row,) = stored(db, second["Message-ID"])
    assert acme_row["org_id"] == org_id(db, "acme")
    assert globex_row["org_id"] == org_id(db, "globex")


def test_us2_plus_address_is_case_insensitive(stack, db, send_mail) -> None:
    msg = order_email(to="Orders+ACME@" + INGEST_DOMAIN.upper())
    send_mail(stack, msg, ["Orders+ACME@" + INGEST_DOMAIN.upper()])
    (row,) = stored(db, msg["Message-ID"])
    assert row["org_id"] == org_id(db, "acme")


@pytest.mark.parametrize(
    "recipient",
    [address("no-such-org"), f"orders@{INGEST_DOMAIN}"],
    ids=["us2_scenario2_unknown_org", "us2_scenario3_no_plus_address"],
)
def test_us2_unknown_or_missing_org_is_refused_and_creates_no_row(
    stack, db, send_mail, recipient: str
) -> None:
    """550 at RCPT when the milter is in the path; without it the pipe answers 67 (bounce).
    A disabled org's queued mail is kept instead: tests/test_org_disable_queued.py."""
    msg = order_email(to=recipient)
    try:
        send_mail(stack, msg, [recipient], mail_from="")
    except smtplib.SMTPRecipientsRefused as refused:
        ((code, text),) = [value for value in refused.recipients.values()]
        assert code == 550 and b"5.1.1" in text
    else:  # accepted by Postfix: the pipe must refuse it as unknown (never store it)
        wait_for(
            lambda: any(
                e.get("message_id") == msg["Message-ID"]
                for e in log_events(stack, "delivery.unknown_org")
                + log_events(stack, "delivery.unknown_recipient")
            ),
            what="delivery refused as unknown",
        )
    assert rows_for(db, msg["Message-ID"]) == []


# --- User story 4: deduplication -------------------------------------------------------------


def test_us4_scenario1_same_message_id_twice_gives_one_row_and_a_warning(
    stack, db, send_mail
) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    stored(db, msg["Message-ID"])
    send_mail(stack, msg, [address("acme")])
    duplicates = wait_for(
        lambda: [
            e
            for e in log_events(stack, "delivery.duplicate")
            if e["message_id"] == msg["Message-ID"]
        ],
        what="duplicate warning",
    )
    assert duplicates[0]["level"] == "WARNING"
    assert duplicates[0]["org_id"] == org_id(db, "acme")
    stack.wait_for_empty_queue(30)
    assert len(rows_for(db, msg["Message-ID"])) == 1


def test_us4_scenario2_different_message_ids_are_both_processed(stack, db, send_mail) -> None:
    first = order_email(subject="Same subject")
    second = order_email(subject="Same subject")
    send_mail(stack, first, [address("acme")])
    send_mail(stack, second, [address("acme")])
    stored(db, first["Message-ID"])
    stored(db, second["Message-ID"])


def test_us4_scenario3_same_message_to_two_orgs_gives_two_rows(stack, db, send_mail) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme"), address("globex")])  # one SMTP transaction
    rows = stored(db, msg["Message-ID"], count=2)
    assert [row["slug"] for row in rows] == ["acme", "globex"]
    assert rows[0]["raw_storage_key"] != rows[1]["raw_storage_key"]


def test_missing_message_id_gets_a_synthetic_one(stack, db, send_mail) -> None:
    msg = order_email(message_id=None, subject=f"no id {uuid.uuid4()}")
    send_mail(stack, msg, [address("acme")])
    row = wait_for(
        lambda: db.execute(
            "SELECT * FROM inbound_message WHERE subject = %s AND status = 'STORED'",
            (msg["Subject"],),
        ).fetchone(),
        what="row for message without Message-ID",
    )
    assert row["message_id_synthetic"] is True
    assert row["source_message_id"].endswith("@synthetic.orderflow>")
    send_mail(stack, msg, [address("acme")])  # the same message again is a duplicate
    wait_for(
        lambda: any(
            e["message_id"] == row["source_message_id"]
            for e in log_events(stack, "delivery.duplicate")
        ),
        what="duplicate of synthetic id",
    )


def test_oversized_header_block_through_postfix_is_still_stored(stack, db, send_mail) -> None:
    """Postfix keeps at most header_size_limit of a header; the message is stored, not lost."""
    marker = uuid.uuid4().hex
    huge_header = "X-Filler: " + ("y" * 900 + "\r\n ") * 1300  # ~1.2 MB folded header
    raw = (
        f"From: a@customer.example\r\nTo: {address('acme')}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@customer.example>\r\n{huge_header}\r\n\r\nbody\r\n"
    )
    send_mail(stack, raw.encode(), [address("acme")])
    (row,) = stored(db, f"<{marker}@customer.example>")
    assert row["size_bytes"] < 200 * 1024


def hand_to_delivery_service(stack: Any, raw: bytes, sender: str, recipient: str) -> int:
    """Run `deliver` as pipe(8) would, bypassing Postfix (which would trim the input)."""
    script = Path(sys.executable).parent / "orderflow-ingest"
    result = subprocess.run(
        [
            str(script),
            "deliver",
            "--config",
            str(stack.config_path),
            "--sender",
            sender,
            "--queue-id",
            "TESTQ",
            "--",
            recipient,
        ],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert b"Traceback" not in result.stdout + result.stderr
    return result.returncode


def test_unparseable_header_block_is_stored_raw_and_marked_failed(stack, db, s3) -> None:
    """Spec edge case "Malformed MIME": store the raw, mark FAILED with a reason, exit 0."""
    marker = uuid.uuid4().hex
    sender = f"{marker}@customer.example"
    raw = b"Subject: x\r\nX-Filler: " + b"y" * (2 * 1024 * 1024) + b"\r\n\r\nbody\r\n"
    assert hand_to_delivery_service(stack, raw, sender, address("acme")) == 0
    row = wait_for(
        lambda: db.execute(
            "SELECT * FROM inbound_message WHERE envelope_sender = %s", (sender,)
        ).fetchone(),
        what="row for malformed message",
    )
    assert row["status"] == "FAILED"
    assert row["error_json"]["stage"] == "deliver"
    assert "header block" in row["error_json"]["reason"]
    body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"]
    assert body.read() == raw
    # The same bytes again are a duplicate of the FAILED row, not a second row.
    assert hand_to_delivery_service(stack, raw, sender, address("acme")) == 0
    count = db.execute(
        "SELECT count(*) AS n FROM inbound_message WHERE envelope_sender = %s", (sender,)
    ).fetchone()
    assert count["n"] == 1


def test_unknown_org_at_delivery_time_exits_67(stack, db) -> None:
    raw = order_email(to=address("no-such-org")).as_bytes()
    assert hand_to_delivery_service(stack, raw, "a@customer.example", address("no-such-org")) == 67


# --- SMTP-level limits and safety ------------------------------------------------------------


@pytest.mark.slow
def test_25_mb_message_is_accepted_and_stored(stack, db, s3, send_mail) -> None:
    """25 MB (25,000,000 bytes) on the wire fits message_size_limit = 26214400 with Postfix's
    own queue-file overhead (about one byte per line) and its added headers."""
    payload = bytes(range(256)) * (18_400_000 // 256)  # base64 with line breaks: ~25.0 MB
    msg = order_email(attachments=[("big.pdf", "application/pdf", b"%PDF-1.4\n" + payload)])
    raw = msg.as_bytes()
    assert 24_500_000 < len(raw) <= 25_000_000
    send_mail(stack, raw, [address("acme")])
    (row,) = stored(db, msg["Message-ID"], timeout=120)
    head = s3.head_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])
    assert head["ContentLength"] == row["size_bytes"] > len(raw)  # plus Postfix's headers


def test_larger_than_limit_is_refused_with_552(stack, send_mail) -> None:
    raw = order_email(
        attachments=[("big.bin", "application/octet-stream", b"x" * (20 * 1024 * 1024))]
    ).as_bytes()
    assert len(raw) > 26214400
    with pytest.raises(
        (smtplib.SMTPSenderRefused, smtplib.SMTPDataError, smtplib.SMTPResponseException)
    ) as refused:
        send_mail(stack, raw, [address("acme")])
    assert refused.value.smtp_code == 552


def test_recipient_with_leading_dash_or_shell_metacharacters_is_safe(
    stack, db, send_mail, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    hostile = [
        f"-orders+acme@{INGEST_DOMAIN}",
        f"orders+acme$(touch${{IFS}}{canary})@{INGEST_DOMAIN}",
        f'"orders+acme;touch {canary}"@{INGEST_DOMAIN}',
        f"orders+acme`id`@{INGEST_DOMAIN}",
    ]
    for recipient in hostile:
        msg = order_email(to=address("acme"))
        with contextlib.suppress(smtplib.SMTPRecipientsRefused):  # refused at SMTP is fine
            send_mail(stack, msg, [recipient], mail_from="")
        assert rows_for(db, msg["Message-ID"]) == []
    stack.wait_for_empty_queue(30)
    assert not canary.exists()
    assert log_events(stack, "delivery.internal_error") == []


# --- Backend outages: defer, never bounce, then exactly once ---------------------------------


@pytest.mark.parametrize("component", ["s3", "postgres", "redis", "deliver"])
def test_backend_outage_defers_then_delivers_exactly_once(
    stack, db, redis_conn, send_mail, component: str
) -> None:
    msg = order_email()
    stack.stop_component(component)
    try:
        send_mail(stack, msg, [address("acme")])  # Postfix accepts: "250" is its disk
        deferred = wait_for(
            lambda: [
                entry
                for entry in stack.postqueue()
                if entry.get("queue_name") == "deferred"
                and any(
                    "temporary failure" in (r.get("delay_reason") or "")
                    for r in entry["recipients"]
                )
            ],
            timeout=60,
            what=f"deferred entry while {component} is down",
        )
        assert deferred
    finally:
        stack.start_component(component)
    stack.flush_queue()
    (row,) = stored(db, msg["Message-ID"], timeout=90)
    stack.wait_for_empty_queue(60)
    assert len(rows_for(db, msg["Message-ID"])) == 1
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn)
    assert job.get_status() in ("queued", "started", "finished")
    assert "status=bounced" not in _maillog_lines_for(stack, msg)


def _maillog_lines_for(stack: Any, msg: EmailMessage) -> str:
    log = stack.maillog_path.read_text(errors="replace")
    queue_ids = {
        line.split(": ")[1].split(":")[0]
        for line in log.splitlines()
        if msg["Message-ID"] in line and "message-id=" in line
    }
    return "\n".join(line for line in log.splitlines() if any(q in line for q in queue_ids))


def test_queue_is_not_left_with_anything_bounced(stack) -> None:
    """Across the module: no delivery to a known org ever bounced for a fault of ours."""
    log = stack.maillog_path.read_text(errors="replace")
    bounced = [
        line for line in log.splitlines() if "status=bounced" in line and "orders+acme@" in line
    ]
    assert bounced == []


def test_an_empty_connection_is_a_probe_not_an_error(stack, db, send_mail) -> None:
    """Health checks that connect and close must not look like failed deliveries."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(stack.settings.deliver_socket)
    probe.close()
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    stored(db, msg["Message-ID"])
    assert log_events(stack, "delivery.internal_error") == []


def test_database_and_s3_latency_are_recorded(stack, db, redis_conn, send_mail) -> None:
    from orderflow_ingest import metrics

    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    stored(db, msg["Message-ID"])

    def recorded() -> set[tuple[str, str]]:
        """(series name, operation label) of every recorded series."""
        fields = metrics.read_all(redis_conn)
        return {
            (name, labels.get("operation", ""))
            for name, labels in (metrics.parse_field(field) for field in fields)
        }

    wanted = {
        ("orderflow_db_seconds_count", "insert_received"),
        ("orderflow_db_seconds_count", "mark_stored"),
        ("orderflow_s3_put_seconds_count", ""),
    }
    wait_for(lambda: wanted <= recorded(), timeout=15, what="latency histograms in Redis")


def test_concurrent_copies_of_one_message_give_one_row(stack, db, s3, send_mail) -> None:
    """Five copies in flight at once (a sender retrying over parallel connections)."""
    from concurrent.futures import ThreadPoolExecutor

    msg = order_email()
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda _: send_mail(stack, msg, [address("acme")]), range(5)))
    stack.wait_for_empty_queue(60)
    (row,) = rows_for(db, msg["Message-ID"])
    assert row["status"] in ("STORED", "PARSED")
    raw = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"]
    assert msg["Message-ID"].encode() in raw.read()
    duplicates = [
        e for e in log_events(stack, "delivery.duplicate") if e["message_id"] == msg["Message-ID"]
    ]
    assert len(duplicates) == 4
    assert log_events(stack, "delivery.internal_error") == []
