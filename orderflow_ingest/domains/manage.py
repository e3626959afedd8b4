"""The domain operations the CLI, the API and the inbox share (`domain add|verify|show`):
registering a domain for an org, the DNS records to publish for it, and checking one now.

Queries stay in store.py, the DNS checks in checks.py and the periodic run in monitor.py; this
module is what sits between them and an operator, whichever door they came through.
"""

from __future__ import annotations

from typing import Any

from orderflow_ingest.db import Conn
from orderflow_ingest.domains import store
from orderflow_ingest.domains.checks import txt_name, txt_value
from orderflow_ingest.domains.monitor import dns_checker, mx_hosts, policy_of, verify_now
from orderflow_ingest.settings import Settings


def publish(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The records the domain's owner publishes: the TXT (name, value) and the MX hosts."""
    return {
        "txt_name": txt_name(row["domain"]),
        "txt_value": txt_value(row["txt_token"]),
        "mx_hosts": list(mx_hosts(settings)),
    }


def add_domain(
    conn: Conn,
    settings: Settings,
    org_id: str,
    domain: str,
    accept_all: bool,
    local_parts: list[str],
) -> dict[str, Any]:
    """Register `domain` for the org (state pending; the caller commits), with what to publish.

    Raises store.DomainError for a name that is not a domain, is one of our ingest domains,
    or names no local part; store.DomainTaken when another live row has it.
    """
    if store.normalise_domain(domain) in settings.ingest_domains:
        raise store.DomainError(f"{domain} is an ingest domain, not a custom domain")
    row = store.add_domain(conn, org_id, domain, accept_all, local_parts)
    return {**row, **publish(row, settings)}


def verify(conn: Conn, settings: Settings, domain: str) -> dict[str, Any] | None:
    """Check `domain` now and apply the result (one of the N needed); commits. None: no such
    live domain. The row as it is afterwards, with the transition's event (or None)."""
    policy = policy_of(settings)
    done = verify_now(conn, domain, dns_checker(settings), policy)
    if done is None:
        return None
    row, outcome = done
    return {
        **row,
        **publish(row, settings),
        "event": outcome.event,
        "previous_state": outcome.before.state,
        "confirmations_needed": policy.confirmations,
    }
