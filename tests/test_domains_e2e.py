"""Custom domains end to end (issue 13): the real Postfix (relay domains and transport from
PostgreSQL through proxy:pgsql:), the milter, the delivery service, and the periodic check
against a real DNS server on loopback whose TXT and MX answers the tests change.

The check runs in-process (domains.monitor.run) with a clock the test moves, so the 48 h grace
takes no time; the milter's domain cache lasts ORDERFLOW_ORG_CACHE_TTL (1 s here).
"""

from __future__ import annotations

import smtplib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from dns_server import LoopbackDns
from ops_support import cli, run_worker
from psycopg.rows import dict_row
from samples import order_email
from support_wait import wait_for

from orderflow_ingest.domains import monitor, store
from orderflow_ingest.domains.checks import check_domain, make_resolver, txt_name, txt_value
from orderflow_ingest.domains.policy import Policy

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DOMAIN = "po.customer.test"
OUR_MX = "mx.orderflow.test"  # the stack's myhostname; the default ORDERFLOW_DOMAIN_MX_HOSTS
SENDER = "buyer@customer.test"
POLICY = Policy(confirmations=2, mx_grace=timedelta(hours=48))


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        server.txt("customer.test", "v=spf1 ip4:127.0.0.1 -all")
        yield server


@pytest.fixture(scope="module")
def domain_stack(make_stack: Callable[..., Any], dns: LoopbackDns) -> Any:
    return make_stack(
        milter=True,
        extra_settings={
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1",
            "ORDERFLOW_ORG_CACHE_TTL": "1",
            "ORDERFLOW_DOMAIN_CONFIRMATIONS": "2",
            "ORDERFLOW_DOMAIN_CHECK_INTERVAL": "0",
        },
    )


@pytest.fixture
def conn(domain_stack: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(
        domain_stack.settings.database_url, row_factory=dict_row, connect_timeout=10
    ) as connection:
        yield connection


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def checker(dns: LoopbackDns) -> monitor.Checker:
    resolver = make_resolver([dns.server])
    return lambda domain, token: check_domain(resolver, domain, token, (OUR_MX,), 0.5)


def check_all(conn: Any, dns: LoopbackDns, clock: Clock) -> list[str]:
    clock.advance(minutes=5)
    report = monitor.run(conn, checker(dns), POLICY, 0, clock)
    return [t["event"] for t in report.transitions]


def rcpt(stack: Any, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.customer.test") as s:
        s.ehlo("mail.customer.test")
        s.mail(SENDER)
        answer = s.rcpt(recipient)
        s.rset()
        return answer


def wait_rcpt(stack: Any, recipient: str, code: int, status: bytes) -> bytes:
    """The milter caches a domain for ORDERFLOW_ORG_CACHE_TTL: wait for the new answer."""

    def check() -> bytes | None:
        got_code, text = rcpt(stack, recipient)
        return text if got_code == code and text.startswith(status) else None

    try:
        return wait_for(check, 20, f"{code} {status.decode()} for {recipient}", interval=0.2)
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer {rcpt(stack, recipient)}") from None


def domain_events(conn: Any, domain: str) -> list[str]:
    rows = conn.execute(
        "SELECT type FROM event WHERE type LIKE 'domain.%%' AND data->>'domain' = %s"
        " ORDER BY txid, id",
        (domain,),
    ).fetchall()
    conn.rollback()
    return [row["type"] for row in rows]


def publish(dns: LoopbackDns, domain: str, token: str) -> None:
    dns.txt(txt_name(domain), txt_value(token))
    dns.mx(domain, 10, OUR_MX)


def test_add_prints_records_and_pending_domain_is_deferred_until_verified(
    domain_stack: Any, dns: LoopbackDns, conn: Any
) -> None:
    result = cli(domain_stack, "domain", "add", "acme", DOMAIN, "-l", "orders", "-l", "Buyers")
    assert result.returncode == 0, result.stderr
    row = store.get_domain(conn, DOMAIN)
    conn.rollback()
    assert row is not None and row["state"] == "pending"
    assert row["local_parts"] == ["orders", "buyers"]
    assert f'{txt_name(DOMAIN)}.  TXT  "{txt_value(row["txt_token"])}"' in result.stdout
    assert f"{DOMAIN}.  MX  10 {OUR_MX}." in result.stdout
    # Pending: a relay domain for Postfix (proxy:pgsql: reads the view), the milter defers
    # it: a sender whose MX record already points here retries until it is verified.
    code, text = rcpt(domain_stack, f"orders@{DOMAIN}")
    assert (code, text[:5]) == (451, b"4.7.1"), (code, text)
    # The DNS is right, but one passing check of the two needed changes nothing yet.
    publish(dns, DOMAIN, row["txt_token"])
    result = cli(domain_stack, "domain", "verify", DOMAIN)
    assert result.returncode == 0, result.stderr
    assert "still pending: 1 of 2" in result.stdout
    assert rcpt(domain_stack, f"orders@{DOMAIN}")[0] == 451


def test_verified_domain_receives_an_order_for_its_org(
    domain_stack: Any, dns: LoopbackDns, conn: Any
) -> None:
    result = cli(domain_stack, "domain", "verify", DOMAIN)
    assert result.returncode == 0, result.stderr
    assert "domain.verified: pending -> verified" in result.stdout
    assert domain_events(conn, DOMAIN) == ["domain.verified"]
    # Postfix accepts it now, without a reload; the milter knows the local parts.
    assert wait_rcpt(domain_stack, f"orders@{DOMAIN}", 250, b"2.1.5")
    code, text = rcpt(domain_stack, f"BUYERS+x@{DOMAIN.upper()}")
    assert code == 250, text
    code, text = rcpt(domain_stack, f"someone@{DOMAIN}")
    assert (code, text) == (550, b"5.1.1 Unknown recipient")
    # An order to it is stored for acme, with its documents.
    message = order_email(to=f"orders@{DOMAIN}", sender=SENDER)
    message_id = message["Message-ID"]
    with smtplib.SMTP(domain_stack.smtp_host, domain_stack.smtp_port) as smtp:
        smtp.ehlo("mail.customer.test")
        smtp.send_message(message, from_addr=SENDER, to_addrs=[f"orders@{DOMAIN}"])

    def stored() -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT m.id::text AS id, m.status, o.slug::text AS slug FROM inbound_message m"
            " JOIN org o ON o.id = m.org_id WHERE m.source_message_id = %s",
            (message_id,),
        ).fetchone()
        conn.rollback()
        return row if row and row["status"] in ("STORED", "PARSED") else None

    row = wait_for(stored, 60, f"a stored row for {message_id}")
    assert row["slug"] == "acme"
    run_worker(domain_stack)
    documents = conn.execute(
        "SELECT file_name FROM document WHERE inbound_message_id = %s", (row["id"],)
    ).fetchall()
    conn.rollback()
    assert [d["file_name"] for d in documents] == ["PO-4711.pdf"]


def test_mx_lost_451_flapping_held_timeouts_ignored_then_suspended_550_and_restored(
    domain_stack: Any, dns: LoopbackDns, conn: Any
) -> None:
    row = store.get_domain(conn, DOMAIN)
    conn.rollback()
    assert row is not None and row["state"] == "verified"
    clock = Clock()
    # Flapping: the MX disappears every other check; never two results in a row.
    for _ in range(3):
        dns.remove(DOMAIN, "MX")
        assert check_all(conn, dns, clock) == []
        dns.mx(DOMAIN, 10, OUR_MX)
        assert check_all(conn, dns, clock) == []
    # The MX now points elsewhere for good: mx_lost after two results, 451 4.7.1 at RCPT.
    dns.remove(DOMAIN, "MX")
    dns.mx(DOMAIN, 10, "mx.other-provider.test")
    assert check_all(conn, dns, clock) == []
    assert check_all(conn, dns, clock) == ["domain.mx_lost"]
    wait_rcpt(domain_stack, f"orders@{DOMAIN}", 451, b"4.7.1")
    # The resolver times out for three days: past the grace, but nothing changes.
    dns.unresponsive(DOMAIN)
    for _ in range(3):
        clock.advance(days=1)
        assert check_all(conn, dns, clock) == []
    assert store.get_domain(conn, DOMAIN)["state"] == "mx_lost"  # type: ignore[index]
    conn.rollback()
    # Answers again, the MX still elsewhere, the grace long over: suspended, 550 5.7.1.
    with dns.lock:
        dns.unresponsive_zones.clear()
    assert check_all(conn, dns, clock) == ["domain.suspended"]
    wait_rcpt(domain_stack, f"orders@{DOMAIN}", 550, b"5.7.1")
    # The org points the MX back at us: restored after two passing checks.
    dns.remove(DOMAIN, "MX")
    dns.mx(DOMAIN, 10, OUR_MX)
    assert check_all(conn, dns, clock) == []
    assert check_all(conn, dns, clock) == ["domain.restored"]
    wait_rcpt(domain_stack, f"orders@{DOMAIN}", 250, b"2.1.5")
    assert domain_events(conn, DOMAIN) == [
        "domain.verified",
        "domain.mx_lost",
        "domain.suspended",
        "domain.restored",
    ]


def test_one_host_checks_a_domain_at_a_time(domain_stack: Any, dns: LoopbackDns) -> None:
    url = domain_stack.settings.database_url
    with (
        psycopg.connect(url, row_factory=dict_row) as first,
        psycopg.connect(url, row_factory=dict_row) as second,
    ):
        far_future = datetime.now(UTC) + timedelta(days=3650)
        claimed = store.claim_due(first, far_future, 100)
        assert DOMAIN in [row["domain"] for row in claimed]
        # The second host skips what the first holds, and never waits for it.
        assert store.claim_due(second, far_future, 100) == []
        report = monitor.run(second, checker(dns), POLICY, 0, Clock())
        assert report.checked == 0
        first.rollback()


def test_postfix_role_reads_only_the_view(domain_stack: Any, conn: Any) -> None:
    from orderflow_ingest.devstack.postgres import POSTFIX_ROLE

    settings = domain_stack.settings
    password = domain_stack.ctx.state.secrets["pg_postfix"]
    info = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    url = psycopg.conninfo.make_conninfo(
        settings.database_url, user=POSTFIX_ROLE, password=password, dbname=info["dbname"]
    )
    with psycopg.connect(url, autocommit=True) as postfix:
        rows = postfix.execute("SELECT domain FROM postfix_custom_domain").fetchall()
        assert (DOMAIN,) in rows
        for table in ("custom_domain", "org", "inbound_message"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                postfix.execute(f"SELECT 1 FROM {table} LIMIT 1")
    # And Postfix itself answers from it: postmap through the stack's own config.
    config = domain_stack.postfix.config_dir
    table = f"pgsql:{config}/orderflow_custom_domains.cf"
    found = subprocess.run(
        ["/usr/sbin/postmap", "-c", str(config), "-q", DOMAIN, table],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert found.stdout.strip() == DOMAIN, found.stderr


def test_removed_domain_is_refused_without_a_reload(domain_stack: Any, conn: Any) -> None:
    result = cli(domain_stack, "domain", "remove", DOMAIN)
    assert result.returncode == 0, result.stderr

    # No reload: an smtpd process that still holds the domain as a relay domain asks the
    # milter, which refuses it (550 5.1.1, domain_removed) once its cache entry expires; a
    # fresh smtpd process refuses it as a relay attempt (554 5.7.1). Never accepted again.
    def refused() -> tuple[int, bytes] | None:
        code, text = rcpt(domain_stack, f"orders@{DOMAIN}")
        return (code, text) if code >= 500 else None

    code, text = wait_for(refused, 20, f"a 5xx for orders@{DOMAIN}", interval=0.2)
    assert (code, text) in {(550, b"5.1.1 Unknown recipient")} or (
        code == 554 and b"Relay access denied" in text
    ), (code, text)
    for _ in range(5):
        assert rcpt(domain_stack, f"orders@{DOMAIN}")[0] >= 500
    assert store.get_domain(conn, DOMAIN) is None


def test_mail_queued_before_removal_is_stored_for_the_org_not_bounced(
    domain_stack: Any, conn: Any
) -> None:
    """Bad timing: Postfix accepted (250) and queued mail while the domain was live, then the
    domain was removed (or its local parts changed) before delivery: still stored, never a
    bounce. Runs after test_removed_domain_is_refused_without_a_reload in this module."""
    from test_ingest_e2e import hand_to_delivery_service

    assert store.get_domain(conn, DOMAIN) is None  # removed by the test before
    for recipient in (f"orders@{DOMAIN}", f"no-longer-listed@{DOMAIN}"):
        message = order_email(to=recipient, sender=SENDER)
        status = hand_to_delivery_service(domain_stack, message.as_bytes(), SENDER, recipient)
        assert status == 0, recipient
        row = conn.execute(
            "SELECT m.status, o.slug::text AS slug FROM inbound_message m"
            " JOIN org o ON o.id = m.org_id WHERE m.source_message_id = %s",
            (message["Message-ID"],),
        ).fetchone()
        conn.rollback()
        assert row is not None and row["status"] in ("STORED", "PARSED"), recipient
        assert row["slug"] == "acme"
    # A domain an org added but never proved is nobody's: Postfix relays it (it is pending),
    # so mail Postfix makes itself for it (a bounce) must not land in that org's inbox.
    unproved = f"unproved-{uuid.uuid4().hex[:8]}.customer.test"
    result = cli(domain_stack, "domain", "add", "acme", unproved, "--accept-all")
    assert result.returncode == 0, result.stderr
    message = order_email(to=f"orders@{unproved}", sender=SENDER)
    assert (
        hand_to_delivery_service(domain_stack, message.as_bytes(), SENDER, f"orders@{unproved}")
        == 67
    )
    assert cli(domain_stack, "domain", "remove", unproved).returncode == 0
    # A domain no org ever had is still an unknown recipient.
    stranger = f"orders@never-ours-{uuid.uuid4().hex[:8]}.test"
    message = order_email(to=stranger, sender=SENDER)
    assert hand_to_delivery_service(domain_stack, message.as_bytes(), SENDER, stranger) == 67


def test_role_mailboxes_of_a_custom_domain_reach_the_operator(
    domain_stack: Any, dns: LoopbackDns, conn: Any
) -> None:
    """RFC 5321 §4.5.1 / RFC 2142 (issue 16): postmaster@ and abuse@ of a verified custom
    domain are accepted and routed to the operator's address, not to the org, whatever its
    local parts. Its own domain, added and verified here, removed at the end."""
    from orderflow_ingest.devstack.postfix import DEV_POSTMASTER_ADDRESS

    domain = f"role-{uuid.uuid4().hex[:8]}.customer.test"
    result = cli(domain_stack, "domain", "add", "acme", domain, "-l", "orders")
    assert result.returncode == 0, result.stderr
    row = store.get_domain(conn, domain)
    conn.rollback()
    assert row is not None
    # Pending: not a domain we accept mail for yet, its postmaster neither (451 4.7.1).
    assert rcpt(domain_stack, f"postmaster@{domain}")[0] == 451
    publish(dns, domain, row["txt_token"])
    try:
        for _ in range(POLICY.confirmations):
            result = cli(domain_stack, "domain", "verify", domain)
            assert result.returncode == 0, result.stderr
        assert "domain.verified: pending -> verified" in result.stdout
        assert wait_rcpt(domain_stack, f"postmaster@{domain}", 250, b"2.1.5")
        code, text = rcpt(domain_stack, f"Abuse@{domain.upper()}")
        assert code == 250, text
        code, text = rcpt(domain_stack, f"someone@{domain}")
        assert (code, text) == (550, b"5.1.1 Unknown recipient")
        recipient = f"postmaster@{domain}"
        message = order_email(to=recipient, sender=SENDER)
        message_id = message["Message-ID"]
        with smtplib.SMTP(domain_stack.smtp_host, domain_stack.smtp_port) as smtp:
            smtp.ehlo("mail.customer.test")
            assert smtp.send_message(message, from_addr=SENDER, to_addrs=[recipient]) == {}

        def routed() -> bool:
            log = domain_stack.maillog_path.read_text(errors="replace")
            return any(
                f"to=<{DEV_POSTMASTER_ADDRESS}>" in line and f"orig_to=<{recipient}>" in line
                for line in log.splitlines()
            )

        wait_for(routed, 60, f"{recipient} routed to the operator address")
        stored = conn.execute(
            "SELECT 1 FROM inbound_message WHERE source_message_id = %s", (message_id,)
        ).fetchone()
        conn.rollback()
        assert stored is None, "a role mailbox is never an order of the org"
    finally:
        assert cli(domain_stack, "domain", "remove", domain).returncode == 0
