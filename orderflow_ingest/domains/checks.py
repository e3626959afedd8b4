"""The DNS checks of a custom domain, with dnspython against the configured resolver.

Two look-ups, each with its own conclusion (policy.Answer):
- TXT at `_orderflow.<domain>`: YES when one record is exactly `orderflow-verify=<token>`;
  NO on NXDOMAIN, NODATA or only other records.
- MX at `<domain>`: YES when there is at least one MX and every exchange is one of our MX
  hosts (ORDERFLOW_DOMAIN_MX_HOSTS); NO when there is no MX at all (RFC 5321 5.1 would fall
  back to the A/AAAA record, which is not a statement that mail goes to us), a null MX
  (RFC 7505), or any exchange elsewhere (mail given to that host never reaches us).
Timeouts, SERVFAIL, refused or unreachable servers are ERROR: the state machine ignores them.
No cache: each check asks the resolver afresh (the resolver's own cache is its business).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dns.exception
import dns.name
import dns.resolver

from orderflow_ingest.domains.policy import Answer, CheckResult

TXT_LABEL = "_orderflow"
TXT_PREFIX = "orderflow-verify="


def txt_name(domain: str) -> str:
    return f"{TXT_LABEL}.{domain}"


def txt_value(token: str) -> str:
    return TXT_PREFIX + token


def make_resolver(servers: Iterable[str] = ()) -> dns.resolver.Resolver:
    """The milter's resolver set-up, without dnspython's cache: every check asks afresh."""
    from orderflow_ingest.milter.dns import make_resolver as configured

    resolver = configured(servers)
    resolver.cache = None
    return resolver


def _lookup(
    resolver: dns.resolver.Resolver, name: str, rdtype: str, timeout: float
) -> tuple[list[Any] | None, str]:
    """(records, note); None records when the resolver gave no usable answer."""
    try:
        answer = resolver.resolve(
            name + ".", rdtype, lifetime=timeout, search=False, raise_on_no_answer=False
        )
    except dns.resolver.NXDOMAIN:
        return [], "NXDOMAIN"
    except dns.resolver.NoAnswer:
        return [], "NODATA"
    except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
        return None, "timeout"
    except dns.resolver.NoNameservers:
        return None, "no server answered (SERVFAIL or refused)"
    except (dns.exception.DNSException, OSError) as error:
        return None, type(error).__name__
    if answer.rrset is None:
        return [], "NODATA"
    return list(answer.rrset), "answer"


def check_domain(
    resolver: dns.resolver.Resolver,
    domain: str,
    token: str,
    mx_hosts: Iterable[str],
    timeout: float = 5.0,
) -> CheckResult:
    ours = {host.rstrip(".").lower() for host in mx_hosts}
    records, txt_note = _lookup(resolver, txt_name(domain), "TXT", timeout)
    if records is None:
        txt = Answer.ERROR
    else:
        values = [b"".join(r.strings).decode("utf-8", "replace").strip() for r in records]
        txt = Answer.YES if txt_value(token) in values else Answer.NO
        if records and txt is Answer.NO:
            txt_note = "token not among the TXT records"
    records, mx_note = _lookup(resolver, domain, "MX", timeout)
    if records is None:
        mx = Answer.ERROR
    else:
        exchanges = sorted(r.exchange.to_text(omit_final_dot=True).lower() for r in records)
        if not exchanges:
            mx = Answer.NO  # no MX: the A/AAAA fallback does not point at us
            mx_note += " (no MX)"
        elif exchanges == [""] or exchanges == ["."]:
            mx, mx_note = Answer.NO, "null MX (RFC 7505)"
        else:
            mx = Answer.YES if set(exchanges) <= ours else Answer.NO
            mx_note = "MX " + ", ".join(exchanges)
    return CheckResult(txt, mx, f"txt: {txt.value} ({txt_note}); mx: {mx.value} ({mx_note})")
