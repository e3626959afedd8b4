"""Scenario 5, abuse: relaying, recipient enumeration, connection floods, forged
Authentication-Results and SMTP smuggling.

The suite's stack exempts only 127.0.0.1 from anvil's limits (smtpd_client_event_limit_
exceptions); the "stranger" here connects from 127.0.0.2 and meets the limits of
postfix-config/main.cf exactly as an Internet client would.

What Postfix does with the milter's 550s (checked here, not assumed): smtpd counts every
rejected command, whoever rejected it, so the milter's "550 5.1.1 Unknown recipient" answers
count toward smtpd_soft_error_limit (5: each further reply delayed by smtpd_error_sleep_time,
1 s) and smtpd_hard_error_limit (10: "421 4.7.0 Error: too many errors" and disconnect).
Across connections, anvil's smtpd_client_connection_rate_limit (60/min) and
smtpd_client_connection_count_limit (20) bound one client to about 600 guesses a minute,
the same as smtpd_client_recipient_rate_limit. No milter change is needed for that.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import smtplib
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from reliability_harness import AUTHSERV, SUBTABLES, Harness, reliability_dns, stack_options
from samples import INGEST_DOMAIN, address
from support_wait import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(600)]

STRANGER = ("127.0.0.2", 0)
HELO = "mail.load.test"
FINDINGS: list[list[str]] = []


def smtp_from(rel: Harness, source: tuple[str, int] | None = None) -> smtplib.SMTP:
    smtp = smtplib.SMTP(
        rel.stack.smtp_host,
        rel.stack.smtp_port,
        local_hostname=HELO,
        timeout=60,
        source_address=source,
    )
    smtp.ehlo()
    return smtp


@pytest.fixture(scope="module", autouse=True)
def findings_table() -> Iterator[None]:
    yield
    if FINDINGS:
        SUBTABLES.append(("5 abuse", ["check", "expected", "observed"], FINDINGS))


# --- relaying --------------------------------------------------------------------------------

FOREIGN = [
    "victim@foreign.example",
    f"orders+acme%foreign.example@{INGEST_DOMAIN}",  # percent hack
    f"@{INGEST_DOMAIN}:victim@foreign.example",  # source route
    f"foreign.example!victim@{INGEST_DOMAIN}",  # bang path
    f'"victim@foreign.example"@{INGEST_DOMAIN}',  # quoted local part
    "victim@[192.0.2.1]",  # address literal
    "victim@localhost",
]


@pytest.mark.parametrize("source", [None, STRANGER], ids=["from-mynetworks", "from-stranger"])
def test_relaying_to_foreign_domains_is_refused(
    rel: Harness, source: tuple[str, int] | None
) -> None:
    window = rel.window()
    seen: list[dict[str, tuple[int, bytes]]] = []

    def answered() -> dict[str, tuple[int, bytes]] | None:
        with smtp_from(rel, source) as smtp:
            smtp.mail("someone@load.test")
            answers = {rcpt: smtp.rcpt(rcpt) for rcpt in FOREIGN}
            smtp.rset()
        seen.append(answers)
        return answers if all(500 <= code < 600 for code, _ in answers.values()) else None

    # A foreign domain is looked up in the custom domains (proxy:pgsql:). After a PostgreSQL
    # restart (scenario 3 ran before) the first look-up finds proxymap's connection dead and
    # Postfix answers 451 4.3.0 "Temporary lookup failure" for about a minute (measured 60 s,
    # postfix-config/README.md): still no relay. Every 5 s: the stranger's connections count
    # toward anvil's 60 a minute.
    answers = wait_for(answered, 150, "5xx for every foreign form", interval=5)
    for earlier in seen:
        for rcpt, (code, text) in earlier.items():
            assert code >= 500 or (code == 451 and b"Temporary lookup failure" in text), (
                rcpt,
                code,
                text,
            )
    refused = {rcpt: code for rcpt, (code, _text) in answers.items()}
    assert "status=" not in rel.maillog_since(window)  # nothing queued, nothing relayed
    FINDINGS.append(
        [
            f"relay to {len(FOREIGN)} foreign forms ({'127.0.0.2' if source else '127.0.0.1'})",
            "5xx at RCPT",
            ", ".join(sorted({f"{c}" for c in refused.values()})) + " for all",
        ]
    )


# --- recipient enumeration -------------------------------------------------------------------


def test_rcpt_enumeration_gets_550_each_time_until_postfix_cuts_it_off(rel: Harness) -> None:
    window = rel.window()
    replies: list[tuple[int, bytes, float]] = []
    smtp = smtp_from(rel, STRANGER)
    smtp.mail("prober@load.test")
    started = time.monotonic()
    for n in range(30):
        try:
            code, text = smtp.rcpt(address(f"guess-{n}-{uuid.uuid4().hex[:4]}"))
        except smtplib.SMTPServerDisconnected:
            break
        replies.append((code, text, time.monotonic() - started))
        if code == 421:
            break
    smtp.close()
    codes = [code for code, _text, _at in replies]
    assert codes == [550] * 10 + [421], replies
    assert all(text == b"5.1.1 Unknown recipient" for _c, text, _at in replies[:10])
    assert b"too many errors" in replies[-1][1]
    # smtpd_soft_error_limit = 5, smtpd_error_sleep_time = 1s: replies 6 to 10 slowed down.
    slowed = replies[9][2] - replies[4][2]
    assert slowed >= 4.0, replies
    wait_for(lambda: "too many errors after RCPT" in rel.maillog_since(window), 10, "log")
    FINDINGS.append(
        [
            "30 unknown slugs, one connection",
            "550 each, then cut off",
            f"550 x10 (5.1.1), then 421 too many errors; replies 6-10 took {slowed:.1f}s",
        ]
    )


def test_one_client_may_hold_at_most_20_connections(rel: Harness) -> None:
    held: list[smtplib.SMTP] = []
    refused: list[tuple[int, bytes]] = []
    try:
        for _ in range(22):
            try:
                held.append(smtp_from(rel, STRANGER))
            except smtplib.SMTPConnectError as error:
                text = error.smtp_error
                refused.append(
                    (error.smtp_code, text if isinstance(text, bytes) else text.encode())
                )
    finally:
        for smtp in held:
            smtp.close()
    assert len(held) == 20, (len(held), refused)
    assert refused and all(code == 421 for code, _text in refused)
    assert b"too many connections" in refused[0][1]
    FINDINGS.append(
        ["22 parallel connections, one client", "20 served", f"{len(held)} served, then 421"]
    )


def test_one_client_may_open_at_most_60_connections_a_minute(rel: Harness) -> None:
    opened = 0
    refusal: smtplib.SMTPConnectError | None = None
    for _ in range(80):
        try:
            with smtp_from(rel, STRANGER):
                opened += 1
        except smtplib.SMTPConnectError as error:
            refusal = error
            break
    # Earlier tests of this module already used some of the minute's 60 connections.
    assert refusal is not None, f"{opened} connections and no refusal"
    assert refusal.smtp_code == 421 and b"too many connections" in refusal.smtp_error
    assert opened <= 60
    FINDINGS.append(
        [
            "connections in a loop, one client",
            "<= 60 a minute",
            f"421 after {opened} more (the minute's earlier ones counted)",
        ]
    )


# --- forged Authentication-Results -----------------------------------------------------------


def _forged(marker: str) -> bytes:
    ours = AUTHSERV
    forged = [
        f"Authentication-Results: {ours}; dkim=pass header.d=bank.example;"
        " spf=pass smtp.mailfrom=ceo@bank.example; dmarc=pass header.from=bank.example",
        f"Authentication-Results: {ours.upper()}; dkim=pass header.d=bank.example",
        f"Authentication-Results: (trust me) {ours} 1; spf=pass smtp.mailfrom=ceo@bank.example",
        f"Authentication-Results:\r\n\t{ours};\r\n\tdkim=pass header.d=bank.example",
        f"authentication-results: {ours}; dmarc=pass header.from=bank.example",
        f"Authentication-Results:{ours};dkim=pass header.d=bank.example",
        f"Authentication-Results: {ours}.evil.example; dkim=pass header.d=bank.example",
    ]
    forged += [
        f"Authentication-Results: {ours}; dkim=pass header.d=bank{n}.example" for n in range(30)
    ]
    headers = "\r\n".join(
        [
            "Received: from relay.evil.example by relay.evil.example;"
            " Sat, 21 Nov 2026 10:00:00 +0000",
            *forged[:3],
            "From: CEO <ceo@bank.example>",
            f"To: {address('acme')}",
            f"Subject: urgent order {marker}",
            "Date: Sat, 21 Nov 2026 10:14:00 +0000",
            f"Message-ID: <{marker}@bank.example>",
            *forged[3:],
        ]
    )
    return (headers + "\r\n\r\nPay now.\r\n").encode()


def _authserv_id(value: str) -> str:
    value = re.sub(r"\s+", " ", value).strip()
    value = re.sub(r"^(\([^)]*\)\s*)+", "", value)
    return re.split(r"[;\s]", value, maxsplit=1)[0].lower()


def test_forged_authentication_results_never_survive(rel: Harness) -> None:
    marker = f"forged-{uuid.uuid4().hex[:8]}"
    with smtp_from(rel) as smtp:
        smtp.sendmail("buyer@load.test", [address("acme")], _forged(marker))
    message_id = f"<{marker}@bank.example>"

    def row() -> dict[str, Any] | None:
        with rel.connect() as conn:
            return conn.execute(
                "SELECT status, raw_storage_key, auth_results FROM inbound_message"
                " WHERE source_message_id = %s AND status IN ('STORED', 'PARSED')",
                (message_id,),
            ).fetchone()

    found = wait_for(row, 60, "the message with forged headers")
    from orderflow_ingest.storage import make_client

    raw = (
        make_client(rel.stack.settings)
        .get_object(Bucket=rel.stack.settings.s3_bucket, Key=found["raw_storage_key"])["Body"]
        .read()
    )
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    values = [str(v) for v in parsed.get_all("Authentication-Results") or []]
    ours = [v for v in values if _authserv_id(v) == AUTHSERV.lower()]
    assert len(ours) == 1, values
    assert values[0] == ours[0], "ours is not the topmost Authentication-Results"
    assert "dkim=pass" not in ours[0] and "dmarc=pass" not in ours[0], ours[0]
    assert "header.d=bank" not in ours[0] and "smtp.mailfrom=ceo@" not in ours[0], ours[0]
    assert any(v.startswith(f"{AUTHSERV}.evil.example") for v in values)  # not ours: kept
    verdicts = found["auth_results"]
    assert verdicts["dkim"] == [] or all(d["result"] != "pass" for d in verdicts["dkim"])
    assert verdicts["spf"]["result"] == "pass"  # load.test allows 127.0.0.0/8: the real one
    assert verdicts["spf"]["smtp.mailfrom"] == "buyer@load.test"
    assert (verdicts.get("dmarc") or {}).get("result") != "pass"
    FINDINGS.append(
        [
            "37 forged Authentication-Results (7 forms)",
            "none survive with our id",
            f"1 of {len(values)} left with our id, ours, on top; dkim/dmarc not pass",
        ]
    )


# --- SMTP smuggling (CVE-2023-51764) ----------------------------------------------------------


def smuggle(host: str, port: int, marker: str) -> list[bytes]:
    """One DATA whose body hides "<LF>.<CR><LF>" and a second transaction behind it."""
    conn = socket.create_connection((host, port), timeout=30)
    reader = conn.makefile("rb")

    def reply() -> bytes:
        lines = []
        while True:
            line = reader.readline()
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    replies = [reply()]
    for command in (
        f"EHLO {HELO}",
        "MAIL FROM:<buyer@load.test>",
        f"RCPT TO:<{address('acme')}>",
        "DATA",
    ):
        conn.sendall(command.encode() + b"\r\n")
        replies.append(reply())
    conn.sendall(
        (
            f"From: buyer@load.test\r\nSubject: outer\r\nMessage-ID: <{marker}-outer@load.test>"
            f"\r\n\r\nouter body\n.\r\nMAIL FROM:<ceo@bank.example>\r\n"
            f"RCPT TO:<{address('globex')}>\r\nDATA\r\nFrom: ceo@bank.example\r\n"
            f"Message-ID: <{marker}-smuggled@bank.example>\r\n\r\nsmuggled\r\n.\r\n"
        ).encode()
    )
    time.sleep(1)
    conn.sendall(b"QUIT\r\n")
    rest = b""
    conn.settimeout(10)
    try:
        while chunk := conn.recv(65536):
            rest += chunk
    except OSError:
        pass
    conn.close()
    replies.append(rest)
    return replies


def _smuggled_rows(rel: Harness, marker: str) -> list[str]:
    with rel.connect() as conn:
        rows = conn.execute(
            "SELECT source_message_id FROM inbound_message WHERE source_message_id LIKE %s",
            (f"<{marker}-%",),
        ).fetchall()
    return sorted(row["source_message_id"] for row in rows)


def test_smtp_smuggling_is_not_accepted_as_a_second_message(rel: Harness) -> None:
    marker = f"smuggle-{uuid.uuid4().hex[:8]}"
    replies = smuggle(rel.stack.smtp_host, rel.stack.smtp_port, marker)
    queued = replies[-1].count(b"queued as")
    FINDINGS.append(["SMTP smuggling (<LF>.<CR><LF>)", "1 message", f"{queued} messages queued"])
    assert queued == 1, replies[-1]


def test_smtp_smuggling_is_stopped_by_forbid_bare_newline(make_stack: Any) -> None:
    """The fix for the finding above, on a stack of its own: smtpd_forbid_bare_newline =
    normalize (Postfix >= 3.7.10, the default from 3.9) keeps the smuggled lines in the
    first message's body. Its exclusions default to $mynetworks, which holds loopback, the
    only address a test can connect from; an inbound-only MX has no client to exempt."""
    dns = reliability_dns()
    try:
        overrides = {
            "smtpd_forbid_bare_newline": "normalize",
            "smtpd_forbid_bare_newline_exclusions": "",
        }
        options = stack_options(dns, workers=0, postfix_overrides=overrides)
        stack = make_stack(**options)
        marker = f"smuggle-{uuid.uuid4().hex[:8]}"
        replies = smuggle(stack.smtp_host, stack.smtp_port, marker)
    finally:
        dns.stop()
    assert replies[-1].count(b"queued as") == 1, replies[-1]
    FINDINGS.append(
        ["smuggling with smtpd_forbid_bare_newline = normalize", "1 message", "1 message"]
    )
