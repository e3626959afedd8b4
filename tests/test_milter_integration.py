"""The milter daemon behind the stack's real Postfix, with a real DNS server on loopback.

Over real SMTP (smtplib): RCPT decisions before DATA, 451 while PostgreSQL is down, Postfix's
tempfail while the milter is down, SPF/DKIM/DMARC verdicts on the stored message (the raw
MIME in S3 carries our one Authentication-Results header) and on its inbound_message row (the
delivery service parses that header with orderflow_ingest.auth_verdicts.parse_our_verdicts).
Messages are DKIM-signed with keys generated here; the DNS server publishes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import LoopbackDns
from milter_harness import ed25519_key, make_message, rsa_key
from samples import INGEST_DOMAIN, address
from support_wait import wait_for

from orderflow_ingest.auth_verdicts import parse_our_verdicts

pytestmark = [pytest.mark.stack, pytest.mark.slow]

AUTHSERV = "mx.orderflow.test"
RSA = rsa_key("s2026", "sender.test")
ED = ed25519_key("ed2026", "sender.test")
ESP = rsa_key("esp", "esp.example")
MISSING = rsa_key("gone", "sender.test")  # never published


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        # The test client connects from 127.0.0.1.
        server.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
        server.txt("_dmarc.sender.test", "v=DMARC1; p=reject")
        for key in (RSA, ED, ESP):
            server.txt(key.dns_name, key.public_record)
        server.txt("esp.example", "v=spf1 ip4:127.0.0.1 -all")
        server.txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        server.txt("_dmarc.fail.test", "v=DMARC1; p=reject")
        server.txt("soft.test", "v=spf1 ~all")
        server.txt("_dmarc.soft.test", "v=DMARC1; p=none")
        server.unresponsive("dead.test")
        yield server


@pytest.fixture(scope="module")
def milter_stack(make_stack: Callable[..., Any], dns: LoopbackDns) -> Any:
    return make_stack(
        milter=True,
        extra_settings={
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1.5",
            "ORDERFLOW_AUTHSERV_ID": AUTHSERV,
            "ORDERFLOW_MILTER_LOOKUP_TIMEOUT": "2",
        },
    )


@pytest.fixture
def db(milter_stack: Any) -> Iterator[Any]:
    """A connection to this module's stack (conftest's `db` belongs to the session stack)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(
        milter_stack.settings.database_url,
        autocommit=True,
        row_factory=dict_row,
        connect_timeout=10,
    ) as conn:
        yield conn


@pytest.fixture(scope="module")
def s3(milter_stack: Any) -> Iterator[Any]:
    from orderflow_ingest.storage import make_client

    client = make_client(milter_stack.settings)
    yield client
    client.close()


def stored_row(db: Any, message_id: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = db.execute(
            "SELECT *, id::text AS id FROM inbound_message WHERE source_message_id = %s",
            (message_id,),
        ).fetchone()
        return row if row and row["status"] in ("STORED", "PARSED") else None

    return wait_for(check, timeout, f"a stored row for {message_id}")


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@sender.test>"


def send(
    stack: Any, raw: bytes, sender: str = "buyer@sender.test", rcpt: str | None = None
) -> None:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.sender.test") as s:
        s.sendmail(sender, [rcpt or address("acme")], raw)


def deliver_and_read(
    stack: Any, db: Any, s3: Any, raw: bytes, sender: str = "buyer@sender.test"
) -> tuple[dict[str, Any], bytes]:
    message_id = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    send(stack, raw, sender)
    row = stored_row(db, message_id)
    obj = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])
    return row, obj["Body"].read()


def header_values(raw: bytes, name: str) -> list[str]:
    import email.parser
    import email.policy

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    return [str(value) for value in headers.get_all(name) or []]


def order(from_addr: str = "Buyer <buyer@sender.test>", **kwargs: Any) -> bytes:
    return make_message(from_addr=from_addr, to_addr=address("acme"), message_id=new_id(), **kwargs)


# --- RCPT, before DATA -------------------------------------------------------------------------


def test_rcpt_decisions_over_smtp(milter_stack: Any) -> None:
    with smtplib.SMTP(milter_stack.smtp_host, milter_stack.smtp_port) as smtp:
        smtp.ehlo("mail.sender.test")
        assert smtp.mail("buyer@sender.test")[0] == 250
        assert smtp.rcpt(address("acme"))[0] == 250
        assert smtp.rcpt(f"ORDERS+ACME@{INGEST_DOMAIN.upper()}")[0] == 250
        for refused in (address("no-such-org"), f"orders@{INGEST_DOMAIN}", address("disabled-co")):
            code, text = smtp.rcpt(refused)
            assert (code, text) == (550, b"5.1.1 Unknown recipient"), refused
        code, _text = smtp.rcpt("someone@elsewhere.example")  # Postfix's relay control
        assert code in (454, 554)
        smtp.rset()


def test_null_sender_to_a_known_org_is_accepted(milter_stack: Any, db: Any) -> None:
    raw = order()
    send(milter_stack, raw, sender="")
    message_id = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    row = stored_row(db, message_id)
    assert row["auth_results"]["spf"]["smtp.helo"] == "mail.sender.test"


# --- verdicts on the stored message and the row ------------------------------------------------


def test_signed_message_gets_one_header_forged_ones_removed(
    milter_stack: Any, db: Any, s3: Any
) -> None:
    forged = [
        ("Authentication-Results", f"{AUTHSERV}; dkim=pass header.d=bank.example"),
        ("Authentication-Results", "relay.example.net; spf=pass smtp.mailfrom=a@example.net"),
        ("Authentication-Results", f"(sneaky) {AUTHSERV.upper()} ; dmarc=pass"),
    ]
    raw = RSA.sign(order(extra_headers=forged))
    row, stored = deliver_and_read(milter_stack, db, s3, raw)
    values = header_values(stored, "Authentication-Results")
    ours = [value for value in values if AUTHSERV in value.lower()]
    assert len(ours) == 1, values
    assert any(value.startswith("relay.example.net") for value in values)
    verdicts = parse_our_verdicts(values, AUTHSERV)
    assert verdicts is not None
    assert verdicts["spf"] == {"result": "pass", "smtp.mailfrom": "buyer@sender.test"}
    assert [(d["result"], d["header.d"]) for d in verdicts["dkim"]] == [("pass", "sender.test")]
    assert verdicts["dmarc"]["result"] == "pass"
    # The delivery service parsed the same header into the row.
    assert row["auth_results"] == verdicts
    # Ours sits directly below Postfix's own Received header: the trace of this hop.
    head = stored.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    names = [line.split(":", 1)[0] for line in head.split("\n") if line and line[0] not in " \t"]
    assert names.index("Authentication-Results") == names.index("Received") + 1


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("buyer@sender.test", "pass"),
        ("buyer@fail.test", "fail"),
        ("buyer@soft.test", "softfail"),
        ("buyer@nospf.test", "none"),
        ("buyer@x.dead.test", "temperror"),
    ],
)
def test_spf_results_reach_the_row(
    milter_stack: Any, db: Any, s3: Any, sender: str, expected: str
) -> None:
    row, _raw = deliver_and_read(milter_stack, db, s3, order(), sender=sender)
    assert row["auth_results"]["spf"] == {"result": expected, "smtp.mailfrom": sender}


@pytest.mark.parametrize(
    ("sign", "expected"),
    [
        (lambda raw: ED.sign(raw), [("pass", "sender.test", "ed25519-sha256")]),
        (
            lambda raw: ESP.sign(RSA.sign(raw, canonicalize=(b"simple", b"simple"))),
            [("pass", "esp.example", "rsa-sha256"), ("pass", "sender.test", "rsa-sha256")],
        ),
        (lambda raw: MISSING.sign(raw), [("permerror", "sender.test", "rsa-sha256")]),
        (
            lambda raw: RSA.sign(raw).replace(b"10 widgets", b"99 widgets"),
            [("fail", "sender.test", "rsa-sha256")],
        ),
    ],
    ids=["ed25519", "two_signatures", "key_missing", "body_tampered"],
)
def test_dkim_results_reach_the_row(
    milter_stack: Any,
    db: Any,
    s3: Any,
    sign: Callable[[bytes], bytes],
    expected: list[tuple[str, str, str]],
) -> None:
    row, _raw = deliver_and_read(milter_stack, db, s3, sign(order()))
    dkim = row["auth_results"]["dkim"]
    assert [(d["result"], d["header.d"], d["header.a"]) for d in dkim] == expected


def test_dmarc_fail_under_p_reject_is_recorded_by_default(
    milter_stack: Any, db: Any, s3: Any
) -> None:
    raw = ESP.sign(order(from_addr="ceo@fail.test"))
    row, _raw = deliver_and_read(milter_stack, db, s3, raw, sender="bounce@esp.example")
    dmarc = row["auth_results"]["dmarc"]
    assert (dmarc["result"], dmarc["policy.dmarc"], dmarc["header.from"]) == (
        "fail",
        "reject",
        "fail.test",
    )


# --- the reject and tempfail policies, on a milter started with them -------------------------


@contextlib.contextmanager
def milter_with(stack: Any, **settings: str) -> Iterator[None]:
    """Replace the stack's milter with one whose settings differ (the environment wins over
    the env file), on the same socket; the stack's own milter is back afterwards."""
    stack.stop_component("milter")
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **settings}
    # Started as root here: the socket must be Postfix's to connect to (0660, group postfix).
    env["ORDERFLOW_MILTER_SOCKET_GROUP"] = "postfix"
    log = stack.base_dir / f"milter-policy-{uuid.uuid4().hex[:8]}.log"
    env["ORDERFLOW_LOG_FILE"] = str(log)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "orderflow-ingest"),
            "milter",
            "--config",
            str(stack.config_path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: log.exists() and "milter.started" in log.read_text(), 30, "milter")
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        stack.start_component("milter")


def test_reject_policy_refuses_dmarc_fail_and_takes_dmarc_pass(milter_stack: Any) -> None:
    with milter_with(milter_stack, ORDERFLOW_DMARC_POLICY="reject"):
        spoofed = ESP.sign(order(from_addr="ceo@fail.test"))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(milter_stack, spoofed, sender="bounce@esp.example")
        assert refused.value.smtp_code == 550
        assert b"5.7.1" in refused.value.smtp_error and b"fail.test" in refused.value.smtp_error
        send(milter_stack, RSA.sign(order()))  # DMARC pass under p=reject: accepted


def test_tempfail_policy_answers_451_on_a_dns_timeout(milter_stack: Any) -> None:
    with milter_with(milter_stack, ORDERFLOW_TEMPFAIL_ON_DNS_ERROR="true"):
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            send(milter_stack, order(), sender="buyer@x.dead.test")
        assert deferred.value.smtp_code == 451
        assert b"4.4.3" in deferred.value.smtp_error


# --- outages -----------------------------------------------------------------------------------


def test_milter_down_means_postfix_tempfails_and_accepts_nothing(
    milter_stack: Any, db: Any
) -> None:
    raw = order()
    milter_stack.stop_component("milter")
    try:
        with pytest.raises(smtplib.SMTPException) as refused:
            send(milter_stack, raw)
        code = getattr(refused.value, "smtp_code", None)
        if code is None:  # SMTPRecipientsRefused carries one code per recipient
            code = next(iter(refused.value.recipients.values()))[0]  # type: ignore[attr-defined]
        assert 400 <= code < 500
        assert milter_stack.postqueue() == []
    finally:
        milter_stack.start_component("milter")
    send(milter_stack, raw)  # the client's retry, with the milter back
    message_id = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert stored_row(db, message_id)["auth_results"]["spf"]["result"] == "pass"


def test_database_down_is_451_at_rcpt_and_the_retry_succeeds(milter_stack: Any) -> None:
    # globex was never looked up in this module, so no cached answer hides the outage.
    milter_stack.stop_component("postgres")
    try:
        with smtplib.SMTP(milter_stack.smtp_host, milter_stack.smtp_port) as smtp:
            smtp.ehlo("mail.sender.test")
            smtp.mail("buyer@sender.test")
            started = time.monotonic()
            code, text = smtp.rcpt(address("globex"))
            assert (code, text) == (451, b"4.3.0 temporary failure, try again later")
            assert time.monotonic() - started < 10
            smtp.rset()
    finally:
        milter_stack.start_component("postgres")

    def retry() -> bool:
        with smtplib.SMTP(milter_stack.smtp_host, milter_stack.smtp_port) as smtp:
            smtp.ehlo("mail.sender.test")
            smtp.mail("buyer@sender.test")
            ok = smtp.rcpt(address("globex"))[0] == 250
            smtp.rset()
            return ok

    wait_for(retry, 30, "RCPT accepted once PostgreSQL is back")


def test_milter_logged_each_decision_with_its_reason(milter_stack: Any) -> None:
    lines = milter_stack.component_log("milter").read_text(errors="replace").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    reasons = {e.get("reason") for e in events if e["event"] == "milter.rcpt"}
    assert {"known_org", "unknown_org", "no_slug", "disabled_org"} <= reasons
    assert any(e["event"] == "milter.verdicts" and e.get("queue_id") for e in events)


def test_item12_dkim_l_reaches_the_row(milter_stack: Any, db: Any, s3: Any) -> None:
    """l= and the unsigned content after it, on inbound_message.auth_results."""
    extra = b"PS: new bank account DE00 0000 0000 0000 0000 00\r\n"
    raw = RSA.sign(order(), length=True) + extra
    row, _raw = deliver_and_read(milter_stack, db, s3, raw)
    (dkim,) = row["auth_results"]["dkim"]
    assert dkim["result"] == "pass"
    assert int(dkim["header.l"]) > 0
    assert dkim["reason"] == f"l= leaves {len(extra)} body bytes unsigned"


def test_item12_two_from_domains_reach_the_row_as_dmarc_fail(
    milter_stack: Any, db: Any, s3: Any
) -> None:
    raw = RSA.sign(order(extra_headers=[("From", "ceo@esp.example")]))
    row, _raw = deliver_and_read(milter_stack, db, s3, raw)
    dmarc = row["auth_results"]["dmarc"]
    assert (dmarc["result"], dmarc["reason"]) == ("fail", "more than one From domain")


def test_item12_local_submission_to_an_ingest_address_is_refused(milter_stack: Any) -> None:
    """sendmail/postdrop skip smtpd and so the milter: the stack's Postfix (rendered from
    postfix-config/main.cf) refuses them outright, for root too, and queues nothing. doctor
    holds the setting."""
    from orderflow_ingest.ops.doctor import OK, _check_local_submission

    config_dir = str(milter_stack.postfix_config_dir.resolve())
    sender = f"local-{uuid.uuid4().hex}@sender.test"
    result = subprocess.run(
        ["/usr/sbin/sendmail", "-C", config_dir, "-f", sender, address("acme")],
        input=order(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"not allowed to submit mail" in result.stderr
    postdrop = subprocess.run(
        ["/usr/sbin/postdrop", "-c", config_dir],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert postdrop.returncode != 0 and b"not allowed to submit mail" in postdrop.stderr
    queue = Path(milter_stack.postfix.queue_dir, "maildrop")
    assert not any(queue.iterdir()), "something reached the maildrop queue"
    assert all(item.get("sender") != sender for item in milter_stack.postqueue())
    assert _check_local_submission(milter_stack.settings).status == OK
