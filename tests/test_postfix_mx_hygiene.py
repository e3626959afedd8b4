"""What a public MX must and must not accept, against the stack's real Postfix.

postmaster@ and abuse@ reach a person (RFC 5321 §4.5.1, RFC 2142); address literals of the
host and other local addresses are refused at RCPT (accepted, they could only sit in the queue
and bounce); ETRN cannot flush our deferred queue; queue lifetime and backoff are deliberate.
"""

from __future__ import annotations

import smtplib
import uuid
from email.message import EmailMessage
from typing import Any

import pytest

from orderflow_ingest.devstack.postfix import DEV_POSTMASTER_ADDRESS
from tests.support_wait import wait_for

pytestmark = pytest.mark.stack


def _rcpt(stack: Any, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.example.net") as smtp:
        smtp.ehlo()
        smtp.mail("someone@example.net")
        return smtp.rcpt(recipient)


def _message(recipient: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "someone@example.net"
    msg["To"] = recipient
    msg["Subject"] = "abuse report"
    msg["Message-ID"] = f"<{uuid.uuid4()}@example.net>"
    msg.set_content("hello postmaster")
    return msg


def _main_cf(stack: Any) -> str:
    return (stack.postfix_config_dir / "main.cf").read_text()


@pytest.mark.parametrize("local_part", ["postmaster", "abuse", "PostMaster"])
def test_role_mailboxes_of_the_ingest_domain_and_the_mx_name_are_accepted(
    stack: Any, local_part: str
) -> None:
    domain = stack.options.ingest_domain
    for recipient in (f"{local_part}@{domain}", f"{local_part}@mx.{domain}"):
        code, reply = _rcpt(stack, recipient)
        assert code == 250, (recipient, reply)


def test_postmaster_mail_is_routed_to_the_configured_address(stack: Any, send_mail: Any) -> None:
    recipient = f"postmaster@{stack.options.ingest_domain}"
    msg = _message(recipient)
    assert send_mail(stack, msg, [recipient]) == {}

    def handed_off() -> bool:
        log = stack.maillog_path.read_text(errors="replace")
        return any(
            f"to=<{DEV_POSTMASTER_ADDRESS}>" in line and f"orig_to=<{recipient}>" in line
            for line in log.splitlines()
        )

    wait_for(handed_off, timeout=60, what="postmaster mail routed to the operator address")


@pytest.mark.parametrize(
    "recipient",
    [
        "orders+acme@[127.0.0.1]",
        "root@[127.0.0.1]",
        "root@mx.{domain}",
        "orders+acme@mx.{domain}",
    ],
)
def test_address_literals_and_other_local_addresses_are_refused_at_rcpt(
    stack: Any, recipient: str
) -> None:
    code, reply = _rcpt(stack, recipient.format(domain=stack.options.ingest_domain))
    assert code == 550, reply


def test_message_to_an_address_literal_never_reaches_the_queue(stack: Any) -> None:
    msg = _message("orders+acme@[127.0.0.1]")
    smtp = smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.example.net")
    with smtp, pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp.sendmail("someone@example.net", ["orders+acme@[127.0.0.1]"], msg.as_bytes())
    assert not [
        entry
        for entry in stack.postqueue()
        if any("[127.0.0.1]" in r.get("address", "") for r in entry.get("recipients", []))
    ]


def test_etrn_is_neither_offered_nor_obeyed(stack: Any) -> None:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.example.net") as smtp:
        code, features = smtp.ehlo()
        assert code == 250
        assert b"ETRN" not in features.upper()
        code, reply = smtp.docmd("ETRN", stack.options.ingest_domain)
        assert code >= 500, reply


def test_queue_lifetime_and_backoff_are_deliberate() -> None:
    """The shipped fragment: 14 days of ride-through, retries at most 10 minutes apart."""
    from orderflow_ingest.devstack.templates import postfix_config_dir

    settings = {}
    for line in (postfix_config_dir() / "main.cf").read_text().splitlines():
        name, equals, value = line.partition(" = ")
        if equals and not line.startswith((" ", "#")):
            settings[name] = value
    assert settings["maximal_queue_lifetime"] == "14d"
    assert settings["delay_warning_time"] == "0"
    assert settings["maximal_backoff_time"] == "600s"
    assert settings["smtpd_discard_ehlo_keywords"] == "etrn"


def test_the_milter_lets_role_mailboxes_of_our_domains_through_at_rcpt() -> None:
    """Postfix checks them (virtual_alias_maps); the milter must not answer 550 no_slug."""
    from orderflow_ingest.milter.recipients import OrgDirectory, OrgStatus, decide

    def lookup(slug: str) -> OrgStatus:
        raise AssertionError("a role mailbox names no org")

    directory = OrgDirectory(lookup, ttl=60)
    for address in ("postmaster@orderflow.test", "<Abuse@ORDERFLOW.test>"):
        verdict = decide(address, "orders", ("orderflow.test",), directory)
        assert (verdict.decision, verdict.reason) == ("accept", "role_mailbox")
    assert decide("orders@orderflow.test", "orders", ("orderflow.test",), directory).reason == (
        "no_slug"
    )
