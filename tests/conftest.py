"""Shared fixtures: the local stack (real PostgreSQL, Redis, S3, Postfix) and clients to it.

The stack starts lazily, once per session, the first time a test asks for it; unit tests never
pay for it. `make_stack(**options)` starts further stacks with other options (the milter-enabled
variant, say), each in its own directory and on its own ports, all stopped at session end.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from redis import Redis

from orderflow_ingest.devstack.stack import Stack, StackOptions

# A shell that ran `eval "$(orderflow-ingest dev up)"` exports ORDERFLOW_* settings; they must
# not steer the tests' own stack (load_settings lets the environment win over the file).
for _name in [name for name in os.environ if name.startswith("ORDERFLOW_")]:
    del os.environ[_name]

POSTFIX = Path("/usr/sbin/postfix")
TEST_ORGS = ("acme", "globex", "disabled-co")
DISABLED_ORGS = ("disabled-co",)
DEFAULT_SENDER = "buyer@customer.example"
DEFAULT_HELO = "mail.customer.example"

StackFactory = Callable[..., Stack]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-stack",
        action="store_true",
        help="Leave stack directories (logs, maillog, data) in /tmp after the session.",
    )


# Modules that need no stack but take seconds each: they start real daemons (libmilter),
# run hypothesis over hundreds of messages, burn CPU limits in sandboxes or wait on DNS and
# alert-rule timeouts. `make unit` leaves them to `make test`.
SLOW_WITHOUT_STACK = frozenset(
    {
        "test_backpressure_units.py",
        "test_domains_checks.py",
        "test_milter_daemon.py",
        "test_mime_limits.py",
        "test_mime_properties.py",
        "test_ops_alerts.py",
        "test_ops_mx_checks.py",
    }
)
# A test in the fast tier that takes longer than this is named at the end of `make unit`.
FAST_TIER_SECONDS = 2.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier (`make unit`, under 30 s) is every test that is neither `stack` nor
    `slow`. A test that uses the stack, directly or through another fixture, is marked `stack`
    here, so a new test lands in the right tier without anyone remembering a marker; a test
    that takes seconds without the stack is marked `slow` in its module, or its module is
    listed in SLOW_WITHOUT_STACK, and `make unit` names any test that should have been."""
    for item in items:
        if "make_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
        if item.path.name in SLOW_WITHOUT_STACK:
            item.add_marker(pytest.mark.slow)


_slow_in_fast_tier: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    fast = "slow" not in report.keywords and "stack" not in report.keywords
    if report.when == "call" and fast and report.duration > FAST_TIER_SECONDS:
        _slow_in_fast_tier.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _slow_in_fast_tier:
        terminalreporter.section(f"fast-tier tests slower than {FAST_TIER_SECONDS:.0f} s")
        for nodeid, seconds in _slow_in_fast_tier:
            terminalreporter.write_line(f"{seconds:5.1f}s {nodeid}: mark it slow (or speed it up)")


def _stack_dir() -> Path:
    """A directory under /tmp, not pytest's tmp_path: /tmp/pytest-of-root is mode 0700, and
    the postgres, postfix and orderflow users must reach their files in the stack."""
    base = Path(tempfile.mkdtemp(prefix="orderflow-stack-", dir="/tmp"))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="module")
def pyspf_through_budget() -> Iterator[None]:
    """What the milter's start-up does for in-process milter tests (spf_check.install());
    undone after the module, so other tests see pyspf as shipped."""
    import spf

    from orderflow_ingest.milter import spf_check

    original = spf.DNSLookup
    spf_check.install()
    yield
    spf.DNSLookup = original


@pytest.fixture(scope="session")
def make_stack(request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    """Start a stack with the given StackOptions fields; all are stopped at session end."""
    stacks: list[Stack] = []

    def factory(**options: Any) -> Stack:
        if not POSTFIX.is_file():
            pytest.fail(f"{POSTFIX} is missing: run scripts/install-system-deps (apt: postfix)")
        options.setdefault("org_slugs", TEST_ORGS)
        stack = Stack(_stack_dir(), StackOptions(**options))
        stacks.append(stack)
        stack.up()
        _disable_orgs(stack, DISABLED_ORGS)
        return stack

    yield factory
    keep = request.config.getoption("--keep-stack")
    for stack in reversed(stacks):
        stack.down()
        if keep:
            print(f"\nstack kept in {stack.base_dir}")
        else:
            shutil.rmtree(stack.base_dir, ignore_errors=True)


def _disable_orgs(stack: Stack, slugs: Sequence[str]) -> None:
    from orderflow_ingest import db, orgs

    with db.connect(stack.settings.migrate_url) as conn:
        for slug in slugs:
            if orgs.org_by_slug(conn, slug) is not None:
                orgs.set_org_status(conn, slug, "disabled")
        conn.commit()


@pytest.fixture(scope="session")
def stack(make_stack: StackFactory) -> Stack:
    """The session's stack: Postfix → pipe → delivery service; no milter, no RQ workers."""
    return make_stack()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Any:
    return stack.settings


class ReconnectingConnection:
    """A psycopg connection (dict rows, autocommit) that reconnects once when PostgreSQL was
    restarted under it: outage tests stop the database mid-test and then read rows again."""

    def __init__(self, url: str):
        self._url = url
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self._url, autocommit=True, row_factory=dict_row, connect_timeout=10)

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[dict[str, Any]]:
        try:
            return self._conn.execute(query, params)
        except psycopg.OperationalError:
            if not self._conn.closed and self._conn.info.status == psycopg.pq.ConnStatus.OK:
                raise
            self._conn.close()
            self._conn = self._connect()
            return self._conn.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def db(settings: Any) -> Iterator[ReconnectingConnection]:
    """The runtime role's connection, new per test and surviving a PostgreSQL restart."""
    conn = ReconnectingConnection(settings.database_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def redis_conn(settings: Any) -> Iterator[Redis]:
    client = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def s3(settings: Any) -> Any:
    from orderflow_ingest.storage import make_client

    client = make_client(settings)
    yield client
    client.close()


def send_mail(
    stack: Stack,
    message: EmailMessage | bytes,
    rcpt_to: Sequence[str],
    mail_from: str = DEFAULT_SENDER,
    helo: str = DEFAULT_HELO,
    timeout: float = 120,
) -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction with the stack's Postfix; returns the refused recipients.

    smtplib raises what Postfix answered: SMTPRecipientsRefused when every RCPT is refused,
    SMTPSenderRefused at MAIL (a SIZE= above the limit gives 552), SMTPDataError after DATA.
    """
    data = message.as_bytes() if isinstance(message, EmailMessage) else message
    with smtplib.SMTP(
        stack.smtp_host, stack.smtp_port, local_hostname=helo, timeout=timeout
    ) as smtp:
        return smtp.sendmail(mail_from, list(rcpt_to), data)


@pytest.fixture(name="send_mail")
def send_mail_fixture() -> Callable[..., dict[str, tuple[int, bytes]]]:
    return send_mail
