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

from orderflow_ingest.addressing import is_our_domain, is_role_mailbox, org_slug


class OrgStatus(Enum):
    ACTIVE = "active"
    DISABLED = "disabled"
    UNKNOWN = "unknown"


class DirectoryUnavailable(Exception):
    """The org directory (the database) could not answer in time."""


# How a slug is looked up: returns the org's status; raises DirectoryUnavailable.
OrgLookup = Callable[[str], OrgStatus]


class OrgDirectory:
    """Thread-safe TTL cache over an OrgLookup (libmilter runs a thread per connection)."""

    def __init__(
        self,
        lookup: OrgLookup,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._lookup = lookup
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

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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


@dataclass(frozen=True)
class RcptDecision:
    decision: str  # "accept" | "reject" | "tempfail" | "continue"
    reason: str  # the metrics label: known_org, unknown_org, disabled_org, no_slug, ...
    slug: str | None = None


def decide(
    address: str, local_part: str, domains: tuple[str, ...], directory: OrgDirectory
) -> RcptDecision:
    """What to answer at RCPT TO for `address`."""
    if not is_our_domain(address, domains):
        return RcptDecision("continue", "other_domain")
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
