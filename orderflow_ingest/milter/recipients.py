"""The RCPT decision: is orders+<slug>@<our domain> an org that may receive mail?

Answers come from PostgreSQL through a pool that survives a restart, behind a small TTL cache
(positive and negative), so a flood of RCPTs to one address is one query per TTL, and a flood
of random slugs cannot grow memory without bound. A database that cannot answer is never a
"no": the caller answers 451 and the sender retries.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from orderflow_ingest.addressing import is_our_domain, is_role_mailbox, org_slug, split_address
from orderflow_ingest.milter import replies


class OrgStatus(Enum):
    ACTIVE = "active"
    DISABLED = "disabled"
    UNKNOWN = "unknown"


class DirectoryUnavailable(Exception):
    """The org directory (the database) could not answer in time."""


# How a slug is looked up: returns the org's status; raises DirectoryUnavailable.
OrgLookup = Callable[[str], OrgStatus]


@dataclass(frozen=True)
class CustomDomain:
    """What RCPT needs of a custom domain (sql/009, orderflow_ingest/domains)."""

    state: str  # pending | verified | mx_lost | suspended | removed
    org_slug: str
    org_status: OrgStatus
    accept_all: bool
    local_parts: tuple[str, ...]

    def accepts(self, local_part: str) -> bool:
        base = local_part.split("+", 1)[0].lower()
        return self.accept_all or base in self.local_parts


# How a custom domain is looked up: None when it is not one; raises DirectoryUnavailable.
DomainLookup = Callable[[str], CustomDomain | None]


class OrgDirectory:
    """Thread-safe TTL cache over an OrgLookup (libmilter runs a thread per connection)."""

    def __init__(
        self,
        lookup: OrgLookup,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        domain_lookup: DomainLookup | None = None,
    ):
        self._lookup = lookup
        self._domain_lookup = domain_lookup
        self._domains: OrderedDict[str, tuple[float, CustomDomain | None]] = OrderedDict()
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, OrgStatus]] = OrderedDict()

    def status(self, slug: str) -> tuple[OrgStatus, bool]:
        """(status, whether it came from the cache). Errors are never cached."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(slug)
            if entry is not None and entry[0] > now:
                return entry[1], True
        status = self._lookup(slug)  # outside the lock: a slow database must not serialise
        if self._ttl > 0:
            with self._lock:
                self._entries[slug] = (self._clock() + self._ttl, status)
                self._entries.move_to_end(slug)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return status, False

    def custom_domain(self, domain: str) -> tuple[CustomDomain | None, bool]:
        """(the custom domain or None, from the cache?), cached like orgs; errors never are."""
        if self._domain_lookup is None:
            return None, False
        now = self._clock()
        with self._lock:
            entry = self._domains.get(domain)
            if entry is not None and entry[0] > now:
                return entry[1], True
        found = self._domain_lookup(domain)
        if self._ttl > 0:
            with self._lock:
                self._domains[domain] = (self._clock() + self._ttl, found)
                self._domains.move_to_end(domain)
                while len(self._domains) > self._max:
                    self._domains.popitem(last=False)
        return found, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._domains.clear()


def pool_lookup(pool: Any, timeout: float) -> OrgLookup:
    """An OrgLookup over a psycopg_pool.ConnectionPool; any database error is 'unavailable'."""
    import psycopg
    import psycopg_pool

    from orderflow_ingest.orgs import org_by_slug

    def lookup(slug: str) -> OrgStatus:
        try:
            with pool.connection(timeout=timeout) as conn:
                row = org_by_slug(conn, slug)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as error:
            raise DirectoryUnavailable(type(error).__name__) from error
        if row is None:
            return OrgStatus.UNKNOWN
        return OrgStatus.ACTIVE if row["status"] == "active" else OrgStatus.DISABLED

    return lookup


def pool_domain_lookup(pool: Any, timeout: float) -> DomainLookup:
    """A DomainLookup over the pool (domains/store.py); any database error is 'unavailable'."""
    import psycopg
    import psycopg_pool

    from orderflow_ingest.domains.store import rcpt_lookup

    def lookup(domain: str) -> CustomDomain | None:
        try:
            with pool.connection(timeout=timeout) as conn:
                row = rcpt_lookup(conn, domain)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as error:
            raise DirectoryUnavailable(type(error).__name__) from error
        if row is None:
            return None
        status = {"active": OrgStatus.ACTIVE, "disabled": OrgStatus.DISABLED}.get(
            row["org_status"], OrgStatus.UNKNOWN
        )
        return CustomDomain(
            state=row["state"],
            org_slug=row["org_slug"],
            org_status=status,
            accept_all=bool(row["accept_all"]),
            local_parts=tuple(row["local_parts"] or ()),
        )

    return lookup


# Custom domains whose MX left us: senders holding a cached MX retry later (the domain may
# come back within the grace); suspended: refused for good (issue 13).
DOMAIN_MX_LOST = replies.Reply(
    "451", "4.7.1", "this domain's mail is not routed to this service now, try again later"
)
DOMAIN_SUSPENDED = replies.Reply("550", "5.7.1", "this domain no longer receives mail here")
# Added but not verified yet: its MX may point here already (the customer switched it before
# our checks passed twice); senders retry and get through once it is verified.
DOMAIN_PENDING = replies.Reply(
    "451", "4.7.1", "this domain is not verified for this service yet, try again later"
)


@dataclass(frozen=True)
class RcptDecision:
    decision: str  # "accept" | "reject" | "tempfail" | "continue"
    reason: str  # the metrics label: known_org, unknown_org, disabled_org, no_slug, ...
    slug: str | None = None
    reply: replies.Reply | None = None  # when not the default of the decision


def decide_custom(address: str, directory: OrgDirectory) -> RcptDecision:
    """RCPT for a domain that is not an ingest domain: a custom domain, or Postfix decides."""
    parts = split_address(address)
    if parts is None:
        return RcptDecision("continue", "other_domain")
    local, domain = parts
    try:
        found, _cached = directory.custom_domain(domain)
    except DirectoryUnavailable:
        return RcptDecision("tempfail", "database_unavailable")
    if found is None:
        return RcptDecision("continue", "other_domain")
    slug = found.org_slug
    if found.state == "mx_lost":
        return RcptDecision("tempfail", "domain_mx_lost", slug, DOMAIN_MX_LOST)
    if found.state == "suspended":
        return RcptDecision("reject", "domain_suspended", slug, DOMAIN_SUSPENDED)
    if found.state == "removed":  # still a relay domain in an older smtpd process
        return RcptDecision("reject", "domain_removed", slug)
    if found.state != "verified":
        return RcptDecision("tempfail", "domain_pending", slug, DOMAIN_PENDING)
    if is_role_mailbox(address):  # RFC 5321 §4.5.1: Postfix routes it to the operator
        return RcptDecision("accept", "role_mailbox")
    if not found.accepts(local):
        return RcptDecision("reject", "unknown_local_part", slug)
    if found.org_status is OrgStatus.ACTIVE:
        return RcptDecision("accept", "custom_domain", slug)
    if found.org_status is OrgStatus.DISABLED:
        return RcptDecision("reject", "disabled_org", slug)
    return RcptDecision("reject", "unknown_org", slug)


def decide(
    address: str, local_part: str, domains: tuple[str, ...], directory: OrgDirectory
) -> RcptDecision:
    """What to answer at RCPT TO for `address`."""
    if not is_our_domain(address, domains):
        return decide_custom(address, directory)
    if is_role_mailbox(address):
        return RcptDecision("accept", "role_mailbox")
    slug = org_slug(address, local_part, domains)
    if slug is None:
        return RcptDecision("reject", "no_slug")
    try:
        status, _cached = directory.status(slug)
    except DirectoryUnavailable:
        return RcptDecision("tempfail", "database_unavailable", slug)
    if status is OrgStatus.ACTIVE:
        return RcptDecision("accept", "known_org", slug)
    if status is OrgStatus.DISABLED:
        return RcptDecision("reject", "disabled_org", slug)
    return RcptDecision("reject", "unknown_org", slug)
