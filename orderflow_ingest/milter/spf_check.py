"""SPF (RFC 7208) of the envelope sender, or of the HELO name for the null sender.

pyspf does its DNS through the module-level function `spf.DNSLookup`. `install()`, called
once when the milter starts (never at import), replaces it with a dispatcher that sends each
look-up to the DnsBudget of the check running in the *current thread* (libmilter runs one
thread per connection), so every SPF look-up draws from that check's total budget and uses our
resolver. A thread without a check in progress gets pyspf's original lookup, so other users of
pyspf in the process are unaffected.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import spf

from orderflow_ingest.addressing import split_address
from orderflow_ingest.milter.dns import DnsBudget, DnsTempError

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_local = threading.local()
_original_lookup = spf.DNSLookup


def _budgeted_lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[Any]:
    budget: DnsBudget | None = getattr(_local, "budget", None)
    if budget is None:
        return _original_lookup(name, qtype, *args, **kwargs)
    try:
        records = budget.query(name, qtype)
    except DnsTempError as error:
        raise spf.TempError(f"DNS {error}") from None
    return [((name, qtype), record) for record in records]


def install() -> None:
    """Route pyspf's look-ups through the running check's budget (tests/test_patch_contracts.py
    fails loudly if a pyspf upgrade moves the function it replaces)."""
    spf.DNSLookup = _budgeted_lookup


@dataclass(frozen=True)
class SpfVerdict:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain that was checked (DMARC aligns against it)
    mailfrom: str | None  # envelope sender as checked, None for the null sender
    helo: str | None
    explanation: str


def check_spf(ip: str, sender: str, helo: str, budget: DnsBudget) -> SpfVerdict:
    """SPF for one message; never raises for DNS trouble (that is temperror)."""
    sender = sender.strip().strip("<>")
    helo = (helo or "").strip().rstrip(".").lower()
    if sender:
        parts = split_address(sender)
        identity, domain = "mailfrom", parts[1] if parts else ""
        mailfrom: str | None = sender
    else:
        identity, domain, mailfrom = "helo", helo, None
    if not ip or not domain:
        return SpfVerdict("none", identity, domain, mailfrom, helo or None, "no domain to check")
    _local.budget = budget
    try:
        result, explanation = spf.check2(
            i=ip,
            s=sender,
            h=helo or domain,
            timeout=max(budget.remaining(), 0.001),
            querytime=max(budget.remaining(), 0.001),
        )
    except Exception as error:  # pyspf raises only on bugs; never let SPF fail the message
        result, explanation = "temperror", f"SPF check failed: {type(error).__name__}"
    finally:
        _local.budget = None
    result = result.lower()
    if result not in RESULTS:
        result = "permerror"
    return SpfVerdict(result, identity, domain, mailfrom, helo or None, explanation)
