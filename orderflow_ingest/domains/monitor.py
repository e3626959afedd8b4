"""The periodic verification and monitoring of custom domains (`orderflow-ingest domain check`).

Every host may run it (a systemd timer on each, like sweep and purge): each domain is claimed
in its own short transaction with FOR UPDATE SKIP LOCKED, checked, and its result written with
any transition's event before the commit, so a domain is checked by one host at a time and a
domain checked less than ORDERFLOW_DOMAIN_CHECK_INTERVAL ago is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from orderflow_ingest.db import Conn
from orderflow_ingest.domains import store
from orderflow_ingest.domains.checks import check_domain, make_resolver
from orderflow_ingest.domains.policy import CheckResult, Policy, Step
from orderflow_ingest.logs import log_event
from orderflow_ingest.settings import Settings

Clock = Callable[[], datetime]
Checker = Callable[[str, str], CheckResult]


def utc_now() -> datetime:
    return datetime.now(UTC)


def policy_of(settings: Settings) -> Policy:
    return Policy(
        confirmations=int(settings.domain_confirmations),
        mx_grace=timedelta(seconds=float(settings.domain_mx_grace)),
    )


def mx_hosts(settings: Settings) -> tuple[str, ...]:
    return settings.domain_mx_hosts or (f"mx.{settings.ingest_domains[0]}",)


def dns_checker(settings: Settings) -> Checker:
    """check_domain against ORDERFLOW_DNS_SERVERS within ORDERFLOW_DNS_TIMEOUT per look-up."""
    resolver = make_resolver(settings.dns_servers)
    hosts = mx_hosts(settings)
    timeout = float(settings.dns_timeout)

    def check(domain: str, token: str) -> CheckResult:
        return check_domain(resolver, domain, token, hosts, timeout)

    return check


@dataclass
class RunReport:
    checked: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)


def _log(row: dict[str, Any], result: CheckResult, outcome: Step) -> None:
    log_event(
        "domain.checked" if not outcome.event else "domain.state_changed",
        logging.INFO if result.conclusive else logging.WARNING,
        domain=row["domain"],
        org_slug=row["org_slug"],
        state_before=outcome.before.state,
        state=outcome.after.state,
        transition=outcome.event,
        txt=result.txt.value,
        mx=result.mx.value,
        detail=result.detail,
    )


def check_one(
    conn: Conn, row: dict[str, Any], checker: Checker, policy: Policy, clock: Clock
) -> Step:
    """Check a row this transaction holds locked and write the result (the caller commits)."""
    result = checker(row["domain"], row["txt_token"])
    outcome = store.apply_check(conn, row, result, clock(), policy)
    _log(row, result, outcome)
    return outcome


def run(
    conn: Conn,
    checker: Checker,
    policy: Policy,
    interval: float,
    clock: Clock = utc_now,
    limit: int = 10_000,
) -> RunReport:
    """Check every domain that is due, one transaction each; returns what happened."""
    report = RunReport()
    while report.checked < limit:
        due_before = clock() - timedelta(seconds=interval)
        rows = store.claim_due(conn, due_before, 1)
        if not rows:
            conn.rollback()
            break
        row = rows[0]
        try:
            outcome = check_one(conn, row, checker, policy, clock)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        report.checked += 1
        if outcome.event:
            report.transitions.append(
                {
                    "domain": row["domain"],
                    "from": outcome.before.state,
                    "to": outcome.after.state,
                    "event": outcome.event,
                }
            )
    return report


def verify_now(
    conn: Conn, domain: str, checker: Checker, policy: Policy, clock: Clock = utc_now
) -> tuple[dict[str, Any], Step] | None:
    """`domain verify`: check one domain now, whenever it was last checked."""
    row = store.lock_domain(conn, domain)
    if row is None:
        conn.rollback()
        return None
    try:
        outcome = check_one(conn, row, checker, policy, clock)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    fresh = store.get_domain(conn, domain)
    conn.rollback()
    return (fresh or row), outcome
