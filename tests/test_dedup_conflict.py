"""The dedup gate through two real MX hosts (issue 10, item 2): a duplicate is the same org,
Message-ID and content as sent; the same Message-ID with other content is kept, linked and
extracted. Also items 3 (poison headers never defer) and 5 (raw 8-bit headers) on the real
delivery path: SMTP → Postfix → pipe client → delivery service.

mx1 is the session stack (no milter). mx2 is a second Postfix + milter + delivery service +
worker sharing mx1's PostgreSQL, Redis and S3, as a second MX host of one installation does.
mx2's worker consumes its own attachment queue, so only this module's mail is extracted.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from dns_server import LoopbackDns
from ops_support import cli
from rq.job import Job
from samples import address, order_email
from support_wait import wait_for
from test_ingest_e2e import hand_to_delivery_service, log_events, org_id, rows_for

from orderflow_ingest import messages, metrics
from orderflow_ingest.devstack.options import EXTERNAL_SETTINGS
from orderflow_ingest.job_queue import attachment_job_id

pytestmark = pytest.mark.stack

MX2_QUEUE = "orderflow-attachments-mx2"
UMLAUTS = "Bestellung Größe"


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:  # answers NXDOMAIN: SPF none, no DKIM keys
        yield server


@pytest.fixture(scope="module")
def mx2(make_stack: Callable[..., Any], stack: Any, dns: LoopbackDns) -> Any:
    shared = {
        name: value
        for name, value in stack.setting_values().items()
        if name in EXTERNAL_SETTINGS and value
    }
    shared["ORDERFLOW_MIGRATE_DATABASE_URL"] = stack.settings.migrate_url
    return make_stack(
        milter=True,
        workers=1,
        external=shared,
        postfix_overrides={"myhostname": "mx2.orderflow.test"},
        extra_settings={
            "ORDERFLOW_ATTACHMENT_QUEUE": MX2_QUEUE,
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1.5",
            "ORDERFLOW_MILTER_LOOKUP_TIMEOUT": "2",
        },
    )


def smtp_send(stack: Any, raw: bytes, options: list[str] | None = None) -> None:
    with smtplib.SMTP(
        stack.smtp_host, stack.smtp_port, local_hostname="mail.customer.example", timeout=120
    ) as smtp:
        smtp.ehlo()
        if options and "SMTPUTF8" in options:
            assert smtp.has_extn("smtputf8"), "Postfix does not offer SMTPUTF8"
        smtp.sendmail("buyer@customer.example", [address("acme")], raw, mail_options=options or [])


def rows_in(db: Any, message_id: str, count: int, statuses: tuple[str, ...]) -> list[Any]:
    """Wait for `count` rows of this Message-ID in `statuses`, oldest first."""

    def check() -> list[Any] | None:
        rows = db.execute(
            "SELECT *, id::text AS id, conflict_of::text AS conflict_of FROM inbound_message"
            " WHERE message_id = %s ORDER BY created_at, inbound_message.id",
            (message_id,),
        ).fetchall()
        done = [row for row in rows if row["status"] in statuses]
        return rows if len(done) >= count else None

    return wait_for(check, 90, f"{count} row(s) {statuses} for {message_id}")  # type: ignore[no-any-return]


def event_for(stack: Any, event: str, message_id: str, count: int = 1) -> list[dict[str, Any]]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            found
            if len(found := [e for e in log_events(stack, event) if e["message_id"] == message_id])
            >= count
            else None
        ),
        60,
        f"{count} {event} for {message_id}",
    )


def documents_of(db: Any, inbound_message_id: str) -> list[str]:
    rows = db.execute(
        "SELECT file_name FROM document WHERE inbound_message_id = %s ORDER BY file_name",
        (inbound_message_id,),
    ).fetchall()
    return [row["file_name"] for row in rows]


def pdf(marker: str) -> bytes:
    return b"%PDF-1.4\n% " + marker.encode() + b"\n%%EOF\n"


# --- Item 2 ------------------------------------------------------------------------------


def test_item2_same_message_id_different_content_is_kept_as_conflict(
    mx2: Any, stack: Any, db: Any, redis_conn: Any, s3: Any
) -> None:
    message_id = f"<po-{uuid.uuid4().hex}@erp.customer.example>"
    first = order_email(
        message_id=message_id, attachments=[("PO-1.pdf", "application/pdf", pdf("one"))]
    ).as_bytes()
    second = order_email(
        message_id=message_id, attachments=[("PO-2.pdf", "application/pdf", pdf("two"))]
    ).as_bytes()
    smtp_send(mx2, first)
    (original,) = rows_in(db, message_id, 1, ("PARSED",))
    smtp_send(mx2, second)
    rows = rows_in(db, message_id, 2, ("PARSED",))
    assert len(rows) == 2
    original, conflict = rows
    assert original["conflict_of"] is None
    assert conflict["conflict_of"] == original["id"]
    # The first one keeps the Message-ID under 001's unique index (the previous release's
    # ON CONFLICT names it); the conflict carries it in conflict_message_id (sql/003).
    assert original["source_message_id"] == message_id
    assert conflict["source_message_id"] is None
    assert conflict["conflict_message_id"] == conflict["message_id"] == message_id
    assert conflict["content_sha256"] != original["content_sha256"]
    assert conflict["raw_storage_key"] != original["raw_storage_key"]
    # What our hosts prepend, and the content hash leaves out: pipe(8)'s Return-Path (flag
    # R), Postfix's Received line, the milter's Authentication-Results (our authserv-id).
    raw = s3.get_object(Bucket=stack.settings.s3_bucket, Key=conflict["raw_storage_key"])
    head = raw["Body"].read().split(b"\n\n", 1)[0]
    assert head.startswith(b"Return-Path: <buyer@customer.example>\nReceived: from ")
    assert b"by mx2.orderflow.test (Postfix)" in head
    assert b"\nAuthentication-Results: orderflow.test;" in head
    assert second.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] in head
    # Both extracted: each its own job and its own documents.
    assert documents_of(db, original["id"]) == ["PO-1.pdf"]
    assert documents_of(db, conflict["id"]) == ["PO-2.pdf"]
    for row in rows:
        assert Job.fetch(attachment_job_id(row["id"]), connection=redis_conn).origin == MX2_QUEUE
    (warning,) = event_for(mx2, "delivery.message_id_conflict", message_id)
    assert warning["level"] == "WARNING"
    assert warning["conflict_of"] == original["id"]
    assert warning["inbound_message_id"] == conflict["id"]
    # The helper `show`/`trace` use finds the link from either side.
    with messages_conn(stack) as conn:
        assert [r["id"] for r in messages.message_id_conflicts(conn, original["id"])] == [
            conflict["id"]
        ]
        assert [r["id"] for r in messages.message_id_conflicts(conn, conflict["id"])] == [
            original["id"]
        ]
    shown = cli(stack, "show", conflict["id"])
    assert shown.returncode == 0, shown.stderr
    assert f"same Message-ID, other content: {original['id']}" in shown.stdout
    acme = org_id(db, "acme")
    wait_for(
        lambda: any(
            name == "orderflow_message_conflicts_total" and labels == {"org_id": acme}
            for name, labels in map(metrics.parse_field, metrics.read_all(redis_conn))
        ),
        30,
        "orderflow_message_conflicts_total in Redis",
    )
    # Each copy again, through the other MX host: duplicates of their own rows, no third row.
    smtp_send(stack, second)
    smtp_send(stack, first)
    event_for(stack, "delivery.duplicate", message_id, count=2)
    stack.wait_for_empty_queue(60)
    assert len(rows_for(db, message_id)) == 2


def test_item2_retry_via_second_mx_is_duplicate(mx2: Any, stack: Any, db: Any) -> None:
    """Same bytes from the sender through mx1, then mx2 (other Received line, other queue id,
    mx2's milter adds our Authentication-Results): one row, and a WARN on mx2."""
    msg = order_email()
    raw = msg.as_bytes()
    smtp_send(stack, raw)
    (row,) = rows_in(db, msg["Message-ID"], 1, ("STORED", "PARSED"))
    smtp_send(mx2, raw)
    (duplicate,) = event_for(mx2, "delivery.duplicate", msg["Message-ID"])
    assert duplicate["inbound_message_id"] == row["id"]
    assert duplicate["same_bytes"] is False  # the bytes differ; the content as sent does not
    mx2.wait_for_empty_queue(60)
    assert len(rows_for(db, msg["Message-ID"])) == 1


def test_item2_concurrent_copies_via_two_mx_give_one_row(mx2: Any, stack: Any, db: Any) -> None:
    """A sender's parallel retries land on both MX hosts at once: the unique index on
    (org, source, Message-ID, content) collapses them to one row."""
    msg = order_email()
    raw = msg.as_bytes()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: smtp_send((stack, mx2)[i % 2], raw), range(6)))
    stack.wait_for_empty_queue(60)
    mx2.wait_for_empty_queue(60)
    rows = rows_in(db, msg["Message-ID"], 1, ("STORED", "PARSED"))
    assert len(rows) == 1
    duplicates = log_events(stack, "delivery.duplicate") + log_events(mx2, "delivery.duplicate")
    # Every other copy was answered as a duplicate (more if Postfix retried one under load).
    assert len([e for e in duplicates if e["message_id"] == msg["Message-ID"]]) >= 5


def test_item2_concurrent_conflicting_copies_are_both_kept_and_linked(
    mx2: Any, stack: Any, db: Any
) -> None:
    """Two contents under one Message-ID arriving at once on both MX hosts (each twice):
    two rows, never one, and exactly one of them linked to the other."""
    message_ids = [f"<race-{uuid.uuid4().hex}@erp.customer.example>" for _ in range(3)]
    sends = []
    for message_id in message_ids:
        for body in ("10 pallets", "11 pallets"):
            raw = order_email(message_id=message_id, body=body).as_bytes()
            sends += [(stack, raw), (mx2, raw)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: smtp_send(*job), sends))
    for message_id in message_ids:
        # created_at is each transaction's start, not the order the dedup lock was won in,
        # so which copy is the original is read from the link, not from the timestamps.
        rows = rows_in(db, message_id, 2, ("STORED", "PARSED"))
        originals = [row for row in rows if row["conflict_of"] is None]
        conflicts = [row for row in rows if row["conflict_of"] is not None]
        assert len(originals) == 1 and len(conflicts) == 1, rows
        assert conflicts[0]["conflict_of"] == originals[0]["id"]
        assert originals[0]["content_sha256"] != conflicts[0]["content_sha256"]
    stack.wait_for_empty_queue(60)
    mx2.wait_for_empty_queue(60)
    for message_id in message_ids:
        assert len(rows_for(db, message_id)) == 2


def test_item2_row_from_before_content_hashes_is_matched_by_its_bytes(stack: Any, db: Any) -> None:
    """Rows written before sql/003 have no content_sha256: the same bytes again are still a
    duplicate, other content is a conflict linked to the old row."""
    message_id = f"<old-{uuid.uuid4().hex}@customer.example>"
    raw = order_email(message_id=message_id).as_bytes()
    sender = "legacy@customer.example"
    assert hand_to_delivery_service(stack, raw, sender, address("acme")) == 0
    (old,) = rows_for(db, message_id)
    db.execute("UPDATE inbound_message SET content_sha256 = NULL WHERE id = %s", (old["id"],))
    assert hand_to_delivery_service(stack, raw, sender, address("acme")) == 0
    assert len(rows_for(db, message_id)) == 1
    other = order_email(message_id=message_id, body="other order").as_bytes()
    assert hand_to_delivery_service(stack, other, sender, address("acme")) == 0
    rows = rows_for(db, message_id)
    assert len(rows) == 2
    (new,) = [row for row in rows if row["id"] != old["id"]]
    assert str(new["conflict_of"]) == old["id"]


def test_item2_synthetic_ids_include_body(stack: Any, db: Any) -> None:
    """Two orders without Message-ID and with the same From, To, Subject and Date are two
    messages (not one, not a conflict)."""
    subject = f"no id {uuid.uuid4().hex}"
    template = (
        "From: Buyer <buyer@customer.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\nPlease deliver {n} pallets.\r\n"
    )
    for n in (10, 11):
        raw = template.format(to=address("acme"), subject=subject, n=n).encode()
        smtp_send(stack, raw)

    def both() -> list[Any] | None:
        rows = db.execute(
            "SELECT * FROM inbound_message WHERE subject = %s AND status IN ('STORED', 'PARSED')",
            (subject,),
        ).fetchall()
        return rows if len(rows) == 2 else None

    rows = wait_for(both, 60, "two rows without Message-ID")
    assert all(row["message_id_synthetic"] for row in rows)
    assert rows[0]["source_message_id"] != rows[1]["source_message_id"]
    assert all(row["conflict_of"] is None for row in rows)


# --- Item 3 ------------------------------------------------------------------------------

POISON_HEADERS = [
    b"Subject: =?utf-7?q?+2AA-?=",
    b"Subject: =?unicode_escape?q?=5Cud800?=",
    b"Subject: =?utf-8?b?abc?=",
    b"Subject: =?rot13?q?abc?=",
    b"Subject: =?utf-8?q?a=00b?=",
    b"Subject: nul \x00 inside",
    b"From: =?utf-7?q?+2AA-?= <=?unicode_escape?q?=5Cud800?=@customer.example>",
    b"Authentication-Results: orderflow.test; dkim=pass header.d=\xed\xa0\x80\x00",
]


@pytest.mark.parametrize("header", POISON_HEADERS, ids=range(len(POISON_HEADERS)))
def test_item3_poison_header_stored_exit_0(stack: Any, db: Any, s3: Any, header: bytes) -> None:
    """Exit 0, never 75: the raw is stored byte for byte and the row holds storable text."""
    marker = uuid.uuid4().hex
    message_id = f"<{marker}@customer.example>"
    raw = (
        header
        + b"\r\nTo: "
        + address("acme").encode()
        + b"\r\nMessage-ID: "
        + message_id.encode()
        + b"\r\n\r\norder body\r\n"
    )
    assert hand_to_delivery_service(stack, raw, f"{marker}@customer.example", address("acme")) == 0
    (row,) = rows_for(db, message_id)
    assert row["status"] in ("STORED", "PARSED")
    for column in ("subject", "from_email"):
        assert row[column] is None or "\x00" not in row[column]
    body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"]
    assert body.read() == raw
    assert hand_to_delivery_service(stack, raw, f"{marker}@customer.example", address("acme")) == 0
    assert len(rows_for(db, message_id)) == 1


def test_item3_poison_header_through_postfix_is_never_deferred(stack: Any, db: Any) -> None:
    message_id = f"<{uuid.uuid4().hex}@customer.example>"
    raw = (
        b"Subject: =?utf-7?q?+2AA-?= =?unicode_escape?q?=5Cud800?=\r\nTo: "
        + address("acme").encode()
        + b"\r\nMessage-ID: "
        + message_id.encode()
        + b"\r\n\r\norder\r\n"
    )
    smtp_send(stack, raw)
    (row,) = rows_in(db, message_id, 1, ("STORED", "PARSED"))
    # utf-7 decoded to a lone surrogate (replaced); unicode_escape is no charset (kept as text)
    assert row["subject"] == "\ufffd\\ud800"
    queue_id = row["postfix_queue_id"]
    lines = wait_for(
        lambda: (
            [
                line
                for line in stack.maillog_path.read_text(errors="replace").splitlines()
                if f" {queue_id}: " in line and "status=" in line
            ]
            or None
        ),
        30,
        f"delivery status of {queue_id} in the maillog",
    )
    assert all("status=sent" in line for line in lines), lines


def test_item3_unreadable_headers_stored_raw_failed_exit_0(stack: Any, db: Any, s3: Any) -> None:
    """No header field before the body: stored raw, FAILED with the reason, exit 0."""
    marker = uuid.uuid4().hex
    sender = f"{marker}@customer.example"
    raw = b"\n\n" + marker.encode() + b" no headers at all\n"
    assert hand_to_delivery_service(stack, raw, sender, address("acme")) == 0
    row = wait_for(
        lambda: db.execute(
            "SELECT * FROM inbound_message WHERE envelope_sender = %s", (sender,)
        ).fetchone(),
        30,
        "row for a message without headers",
    )
    assert row["status"] == "FAILED"
    assert row["error_json"] == {"stage": "deliver", "reason": "no header fields before the body"}
    body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"]
    assert body.read() == raw


# --- Item 5 ------------------------------------------------------------------------------


@pytest.mark.parametrize("smtputf8", [True, False], ids=["smtputf8", "8bitmime"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_item5_8bit_headers_over_smtp(stack: Any, db: Any, encoding: str, smtputf8: bool) -> None:
    """Raw 8-bit Subject and From, as SMTPUTF8 clients (RFC 6532) and ERP systems send them."""
    message_id = f"<{uuid.uuid4().hex}@customer.example>"
    raw = (
        f"From: Jürgen Größe <jürgen@customer.example>\r\nTo: {address('acme')}\r\n"
        f"Subject: {UMLAUTS}\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nBitte liefern: 10 Paletten Größe M.\r\n"
    ).encode(encoding)
    options = ["SMTPUTF8", "BODY=8BITMIME"] if smtputf8 else ["BODY=8BITMIME"]
    smtp_send(stack, raw, options)
    (row,) = rows_in(db, message_id, 1, ("STORED", "PARSED"))
    assert row["subject"] == UMLAUTS
    assert row["from_email"] == "jürgen@customer.example"


def messages_conn(stack: Any) -> Any:
    from orderflow_ingest import db as database

    return database.connect(stack.settings.database_url)
