"""Scenario 6, byte integrity (issue 10): for every message sent, the stored raw is what was
sent, modulo LF line ends and the trace fields our hosts prepend (Received, Return-Path,
Authentication-Results), compared by sha256 (reliability_harness.raw_difference). Every other
scenario checks the same for each message its client sent (the "raw≠sent" column); this one
adds the faults that cut a message in half and the inputs that once lost or stalled one:

- 6a: mail flowing while the pipe client (deliver.c), Postfix's pipe(8) and the delivery
  service are SIGKILLed mid-message, large messages among the load;
- 6b, one row each: truncated delivery, Message-ID conflict, poison header, hostile TNEF,
  whitespace DKIM body, thousand-part message.

Rows are judged by content, not by Message-ID: each distinct message sent must match exactly
one stored raw (none: lost; more: duplicated; a stored raw matching nothing sent: altered).
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Callable

import pytest
from reliability_harness import (
    FIGURES,
    SERVICE_FAULT_MARKERS,
    Figures,
    Harness,
    RawChecker,
    killed,
    raw_difference,
    run_under_load,
)
from samples import address, minimal_pdf
from smtp_load import SENDER_DOMAIN, Outgoing, SmtpLoad
from support_wait import poll_until

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(1800)]

ORG = "acme"
KILLS: dict[str, int] = {}  # kills that landed mid-message, per target, for the table's notes
CRLF = b"\r\n"


# --- messages --------------------------------------------------------------------------------


def _message(tag: str, index: int, subject: bytes, body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"From: Buyer <buyer@" + SENDER_DOMAIN.encode() + b">\r\n"
        b"To: " + address(ORG).encode() + b"\r\n"
        b"Subject: " + subject + b"\r\n"
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <" + f"{tag}-{index}@{SENDER_DOMAIN}".encode() + b">\r\n"
        b"MIME-Version: 1.0\r\n" + headers + body
    )


def _attachment_message(tag: str, index: int, size: int) -> bytes:
    """A large order: text plus a PDF-looking attachment of `size` bytes (base64)."""
    pdf = minimal_pdf()
    blob = pdf + bytes((index * 7 + n) % 251 for n in range(max(0, size - len(pdf))))
    encoded = base64.encodebytes(blob).replace(b"\n", CRLF)
    body = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nLarge order attached.\r\n--b\r\n"
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="big.pdf"'
        b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b--\r\n"
    )
    return _message(tag, index, f"large order {index}".encode(), body)


def _plain(tag: str, index: int, text: bytes) -> bytes:
    return _message(
        tag, index, b"order", b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + CRLF
    )


def hostile_tnef() -> bytes:
    """29 bytes: a MAPI property block claiming 2^32-1 properties and holding one (tnefparse
    loops over the count once the bytes are used up: minutes to hours of CPU, issue 10 item 6;
    checked: tnefparse 1.4 is still inside TNEF() after 5 s)."""
    data = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHI", 0x0003, 0x0037, 0)
    attribute = struct.pack("<BHHI", 1, 0x9003, 0x0006, len(data)) + data
    attribute += struct.pack("<H", sum(data) & 0xFFFF)
    return struct.pack("<IH", 0x223E9F78, 0x0001) + attribute


def _tnef_message(tag: str, index: int) -> bytes:
    encoded = base64.encodebytes(hostile_tnef()).replace(b"\n", CRLF)
    body = (
        b'Content-Type: multipart/mixed; boundary="t"\r\n\r\n--t\r\n'
        b"Content-Type: text/plain\r\n\r\nsee winmail.dat\r\n--t\r\n"
        b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--t--\r\n"
    )
    return _message(tag, index, b"tnef", body)


def _dkim_whitespace_message(tag: str, index: int, mib: int = 8, signatures: int = 8) -> bytes:
    """Runs of whitespace the relaxed body canonicalisation never flushes, under eight
    DKIM-Signature fields (issue 10 item 7: quadratic in the milter's one process)."""
    signature = (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d="
        + SENDER_DOMAIN.encode()
        + b"; s=s%d; h=from:to:subject; bh=AAAA; b=AAAA\r\n"
    )
    headers = b"".join(signature % n for n in range(signatures))
    line = b" \t" * 450 + CRLF
    body = b"Content-Type: text/plain\r\n\r\nx\r\n" + line * (mib * 1024 * 1024 // len(line))
    return _message(tag, index, b"whitespace", body + b"end\r\n", headers)


def _thousand_parts(tag: str, index: int, parts: int = 1100) -> bytes:
    pieces = [b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n']
    for n in range(parts):
        pieces.append(
            b"--p\r\nContent-Type: text/csv\r\n"
            b'Content-Disposition: attachment; filename="line-%d.csv"\r\n\r\nsku,qty\r\n%d,1\r\n'
            % (n, n)
        )
    pieces.append(b"--p--\r\n")
    return _message(tag, index, b"thousand parts", b"".join(pieces))


def outgoing(tag: str, raws: list[bytes], kind: str) -> list[Outgoing]:
    """One envelope sender per message (rows are found by it as well as by content)."""
    return [
        Outgoing(
            message_id=f"<{tag}-{n}@{SENDER_DOMAIN}>",
            org=ORG,
            kind=kind,
            raw=raw,
            mail_from=f"{tag}-{n}@{SENDER_DOMAIN}",
            expected_documents=0,
        )
        for n, raw in enumerate(raws)
    ]


# --- content-addressed accounting -------------------------------------------------------------


def account_by_content(
    harness: Harness, title: str, window: object, messages: list[Outgoing], tag: str
) -> tuple[Figures, list[dict[str, object]]]:
    """sent/stored/lost/duplicated judged by what the stored raws contain."""
    figures = Figures(title)
    tried = [m for m in messages if m.attempts]
    figures.sent = len(tried)
    figures.refused = sum(1 for m in tried if m.refused)
    figures.tempfailed = sum(m.tempfails for m in tried)
    figures.latencies = [m.latency for m in tried if m.latency is not None]
    accepted = [m for m in tried if m.accepted]
    figures.accepted = len(accepted)
    senders = [m.mail_from for m in messages]
    rows = harness.rows(tag, senders)
    checker = RawChecker(harness)
    keys = harness.raw_keys()
    distinct: dict[bytes, Outgoing] = {}
    for m in accepted:
        distinct.setdefault(m.raw.replace(CRLF, b"\n"), m)
    matches: dict[bytes, int] = dict.fromkeys(distinct, 0)
    for row in rows:
        figures.duplicates += max(0, row["stored_events"] - 1) + max(0, row["parsed_events"] - 1)
        if row["stored_events"]:
            figures.stored += 1
        if row["status"] == "PARSED":
            figures.parsed += 1
        elif row["status"] == "FAILED":
            figures.failed += 1
        if row["raw_storage_key"] not in keys:
            figures.notes.append(f"{row['id']}: {row['status']}, raw missing in S3")
            continue
        stored = checker.stored(row["raw_storage_key"])
        figures.checked += 1
        found = [key for key, m in distinct.items() if raw_difference(m.raw, stored) is None]
        if not found:
            figures.altered += 1
            figures.notes.append(f"{row['id']}: stored raw matches nothing sent ({len(stored)} B)")
        for key in found:
            matches[key] += 1
    figures.lost = sum(1 for count in matches.values() if count == 0)
    figures.duplicates += sum(count - 1 for count in matches.values() if count > 1)
    figures.lost += sum(1 for row in rows if row["status"] in ("RECEIVED", "STORED"))
    log = harness.maillog_since(window)  # type: ignore[arg-type]
    from reliability_harness import BOUNCED, DEFERRED

    figures.bounced = len(BOUNCED.findall(log))
    figures.deferred = len(set(DEFERRED.findall(log)))
    figures.processing = [
        max(0.0, row["done"] - row["received"]) for row in rows if row["done"] is not None
    ]
    return figures, rows


def send_and_account(
    harness: Harness,
    title: str,
    raws: list[bytes],
    during: Callable[[SmtpLoad], None] | None = None,
    timeout: float = 600,
    sessions: int = 4,
) -> tuple[Figures, list[dict[str, object]]]:
    tag = f"int{uuid.uuid4().hex[:6]}"
    window = harness.window()
    messages = outgoing(tag, raws, title)
    load = SmtpLoad(
        harness.stack.smtp_host, harness.stack.smtp_port, sessions=sessions, retry_for=300
    )
    load.start(messages)
    if during is not None:
        during(load)
    load.finish(timeout=timeout)
    senders = [m.mail_from for m in messages if m.accepted]
    harness.log(f"{title}: {len(senders)} of {len(messages)} accepted")
    drained = poll_until(lambda: harness.unfinished(None, senders) == 0, timeout, 1.0)
    figures, rows = account_by_content(harness, title, window, messages, tag)
    figures.drain_seconds = drained
    FIGURES.append(figures)
    harness.log(f"{title}: {figures.row()}")
    return figures, rows


def assert_nothing_lost(figures: Figures) -> None:
    assert figures.accepted == figures.sent, figures.notes
    assert (figures.lost, figures.duplicates, figures.altered, figures.bounced) == (0, 0, 0, 0), (
        figures.notes
    )


# --- 6a: kills mid-message while mail flows ---------------------------------------------------


def killed_mid_message(what: str, times: int) -> Callable[[Harness], float]:
    def step(harness: Harness) -> float:
        started = time.monotonic()
        hits = sum(harness.kill_mid_message(what) for _ in range(times))
        harness.log(f"{what} SIGKILLed mid-message {hits} of {times} times")
        KILLS[what] = KILLS.get(what, 0) + hits
        return time.monotonic() - started

    return step


def test_byte_integrity_when_client_pipe_and_service_are_killed_mid_message(rel: Harness) -> None:
    window = rel.window()

    def large(tag: str) -> list[Outgoing]:
        """Large orders under the load's tag (so the load's accounting finds their rows)."""
        return [
            Outgoing(
                message_id=f"<{tag}-big-{n}@{SENDER_DOMAIN}>",
                org=ORG,
                kind="large",
                raw=_attachment_message(f"{tag}-big", n, 2_000_000 + n * 10_000),
                mail_from=f"buyer@{SENDER_DOMAIN}",
                expected_documents=1,
            )
            for n in range(60)
        ]

    steps = [
        ("pipe client SIGKILLed mid-message x5", killed_mid_message("client", 5)),
        # master(8) throttles a transport whose process died for a minute: three is enough
        ("Postfix pipe(8) SIGKILLed mid-message x3", killed_mid_message("pipe", 3)),
        ("delivery service SIGKILLed", killed("deliver")),
    ]
    figures, _load = run_under_load(
        rel, "6a integrity: kills mid-message", steps, rate=4.0, extra=large, extra_rate=0.25
    )
    figures.notes.append(f"kills that landed mid-message: {KILLS}")
    assert figures.drain_seconds is not None, f"not drained: {rel.queue_counts()}"
    assert figures.accepted == figures.sent, figures.notes
    assert (figures.lost, figures.duplicates, figures.bounced) == (0, 0, 0), figures.notes
    assert figures.checked == figures.accepted and figures.altered == 0, figures.notes
    assert KILLS.get("client", 0) >= 3 and KILLS.get("pipe", 0) >= 2, f"kills missed: {KILLS}"
    assert rel.log_problems(window, SERVICE_FAULT_MARKERS) == []


# --- 6b: one row per loss or stall of issue 10 ------------------------------------------------


def test_truncated_delivery_is_never_stored_and_the_full_retry_is(rel: Harness) -> None:
    """Item 1: the client (then pipe(8)) killed while it streams a large message; Postfix
    retries; exactly the whole message is stored, once."""
    raws = [_attachment_message("trunc", n, 3_000_000) for n in range(8)]

    def kill_while_sending(load: SmtpLoad) -> None:
        hits = sum(rel.kill_mid_message("client", timeout=30) for _ in range(4))
        hits += sum(rel.kill_mid_message("pipe", timeout=30) for _ in range(2))
        rel.log(f"truncated delivery: {hits} kills mid-message")
        assert hits >= 3, "the kills never caught a message in flight"

    figures, _rows = send_and_account(
        rel, "6b truncated delivery", raws, during=kill_while_sending, sessions=2
    )
    assert_nothing_lost(figures)
    assert figures.stored == figures.parsed == len(raws), figures.notes


def test_message_id_conflict_stores_both_and_drops_only_the_true_duplicate(rel: Harness) -> None:
    """Item 2: same Message-ID, different content → two messages; same content again → one."""
    first = _plain("conflict", 1, b"Order A: 10 units")
    second = first.replace(b"Order A: 10 units", b"Order B: 99 units")
    figures, rows = send_and_account(
        rel, "6b Message-ID conflict", [first, second, first], sessions=1
    )
    assert_nothing_lost(figures)
    assert len(rows) == 2, [(r["id"], r["status"]) for r in rows]
    assert {r["source_message_id"] for r in rows} == {f"<conflict-1@{SENDER_DOMAIN}>"}


def test_poison_header_is_stored_failed_not_deferred_or_bounced(rel: Harness) -> None:
    """Item 3: an encoded word that decodes to lone surrogates: stored raw, FAILED with a
    reason (or PARSED), exit 0 — never 75 and a bounce five days later."""
    raws = [
        _message("poison", 1, b"=?utf-7?q?+2AA-?=", b"Content-Type: text/plain\r\n\r\nx\r\n"),
        _message("poison", 2, b"=?unicode_escape?q?=5Cud800?=", b"\r\nx\r\n"),
        _message("poison", 3, b"ok", b"\r\nx\r\n", b"From: =?utf-7?q?+2AA-?= <a@b.example>\r\n"),
    ]
    figures, rows = send_and_account(rel, "6b poison header", raws, sessions=1)
    assert_nothing_lost(figures)
    assert figures.deferred == 0, "a poison header deferred a message"
    assert {r["status"] for r in rows} <= {"PARSED", "FAILED"}


def test_hostile_tnef_costs_bounded_worker_time_and_loses_nothing(rel: Harness) -> None:
    """Item 6: the 47-byte winmail.dat finishes (content failure of that part) within
    minutes, not hours; the raw is stored whole."""
    raws = [_tnef_message("tnef", n) for n in range(3)]
    figures, rows = send_and_account(rel, "6b hostile TNEF", raws, timeout=300)
    assert_nothing_lost(figures)
    assert figures.drain_seconds is not None, "hostile TNEF still holding a worker"
    assert {r["status"] for r in rows} <= {"PARSED", "FAILED"}


def test_whitespace_dkim_body_is_accepted_and_stored_whole(rel: Harness) -> None:
    """Item 7: 8 MiB of whitespace runs under eight DKIM signatures passes the milter within
    SMTP's timeouts; accept latency in the table."""
    raws = [_dkim_whitespace_message("dkimws", n) for n in range(2)]
    figures, _rows = send_and_account(rel, "6b whitespace DKIM body", raws, sessions=2)
    assert_nothing_lost(figures)
    assert figures.tempfailed == 0, "the milter timed out on whitespace"


def test_thousand_part_message_is_stored_whole_and_finishes(rel: Harness) -> None:
    """Item 8: 1,100 attachments: the raw stays whole, the message ends PARSED or FAILED with
    the parts beyond the cap recorded, nothing retried forever."""
    raws = [_thousand_parts("parts", n) for n in range(2)]
    figures, rows = send_and_account(rel, "6b thousand-part message", raws, timeout=600)
    assert_nothing_lost(figures)
    assert {r["status"] for r in rows} <= {"PARSED", "FAILED"}
    assert [r for r in rows if r["status"] == "FAILED" and not r["error_json"]] == []


def test_raw_difference_sees_what_matters() -> None:
    """The comparison itself: trace fields and CRLF are allowed, anything else is not."""
    sent = b"Subject: a\r\nReceived: theirs\r\n\r\nbody\r\n"
    stored = b"Return-Path: <x@y>\nReceived: ours\n\tfolded\nSubject: a\nReceived: theirs\n\nbody\n"
    assert raw_difference(sent, stored) is None
    assert raw_difference(sent, stored.replace(b"body", b"bod")) is not None
    assert raw_difference(sent, stored.replace(b"Subject: a", b"Subject: b")) is not None
    assert raw_difference(sent, stored.replace(b"\nReceived: theirs", b"")) is not None
    assert raw_difference(sent, b"X-Added: 1\n" + stored) is not None
