"""DMARC (RFC 7489): align the RFC5322.From domain with SPF and DKIM, find the policy.

Policy discovery (6.6.3): the TXT record at _dmarc.<From domain>; when there is none, the one
at _dmarc.<organizational domain>, whose sp= then applies. Alignment (3.1): strict means the
same domain, relaxed the same organizational domain (`orgdomain`).

Results: pass (an aligned SPF or DKIM pass), fail (also: more than one From domain, in one
header or several), none (no policy published), temperror (the policy look-up, or an aligned
check that might have passed, hit a DNS time-out), permerror (no From domain at all). What
to do with a fail is the handler's policy decision.
"""

from __future__ import annotations

import email.utils
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from orderflow_ingest.milter.dkim_check import DkimVerdict
from orderflow_ingest.milter.dns import DnsBudget, DnsTempError
from orderflow_ingest.milter.orgdomain import PublicSuffixList, organizational_domain
from orderflow_ingest.milter.spf_check import SpfVerdict

POLICIES = ("none", "quarantine", "reject")  # in order of strictness
MULTIPLE_FROM_DOMAINS = "more than one From domain"
# Domains whose policy is looked up when a message names several (the strictest applies).
MAX_POLICY_LOOKUPS = 4


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str
    adkim: str  # "r" or "s"
    aspf: str
    pct: int


@dataclass(frozen=True)
class DmarcVerdict:
    result: str
    from_domain: str | None
    policy: str | None  # the p= or sp= that applies, None without a record
    record_domain: str | None  # where the record was found
    reason: str | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    pct: int = 100


def parse_record(text: bytes) -> DmarcRecord | None:
    """A DMARC record, or None when the TXT is not one (v=DMARC1 must come first)."""
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags: dict[str, str] = {}
    for index, part in enumerate(decoded.split(";")):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if index == 0:
            if name != "v" or value != "DMARC1":
                return None
            continue
        if sep and name and name not in tags:
            tags[name] = value
    p = tags.get("p", "none").lower()
    p = p if p in POLICIES else "none"
    sp = tags.get("sp", p).lower()
    sp = sp if sp in POLICIES else p
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    pct_text = tags.get("pct", "100")
    pct = min(max(int(pct_text), 0), 100) if pct_text.isdigit() else 100
    return DmarcRecord(p, sp, adkim, aspf, pct)


def from_domains(value: str) -> set[str]:
    """The domains of the addresses in one From header value."""
    domains = {
        address.rpartition("@")[2].strip().rstrip(".").lower()
        for _, address in email.utils.getaddresses([value])
        if "@" in address
    }
    domains.discard("")
    return domains


def from_domain(domains: Collection[str]) -> tuple[str | None, str | None]:
    """(the single RFC5322.From domain, None) or (None, why there is not exactly one).
    `domains` are those of every From header of the message (several headers, or several
    addresses in one, may name the same domain: that is still one author domain)."""
    if not domains:
        return None, "no From domain"
    if len(domains) > 1:
        return None, MULTIPLE_FROM_DOMAINS
    return next(iter(domains)), None


def aligned(domain: str | None, author_domain: str, mode: str, psl: PublicSuffixList) -> bool:
    if not domain:
        return False
    domain = domain.lower().rstrip(".")
    if mode == "s":
        return domain == author_domain
    return organizational_domain(domain, psl) == organizational_domain(author_domain, psl)


def _lookup(domain: str, budget: DnsBudget) -> DmarcRecord | None:
    records = [r for r in (parse_record(txt) for txt in budget.txt("_dmarc." + domain)) if r]
    return records[0] if len(records) == 1 else None


def discover_policy(
    author_domain: str, budget: DnsBudget, psl: PublicSuffixList
) -> tuple[DmarcRecord | None, str | None, bool]:
    """(record, the domain it was found at, whether sp= applies). DnsTempError propagates."""
    record = _lookup(author_domain, budget)
    if record is not None:
        return record, author_domain, False
    org = organizational_domain(author_domain, psl)
    if org != author_domain:
        record = _lookup(org, budget)
        if record is not None:
            return record, org, True
    return None, None, False


def _several_authors(
    domains: Collection[str], budget: DnsBudget, psl: PublicSuffixList
) -> DmarcVerdict:
    """More than one From domain: fail, whatever the header count (one header with two
    addresses, or several headers). Nothing can align with "the" author when there are two,
    and a permerror would let a sender escape a p=reject by adding a second From. The
    strictest policy among the named domains applies, so ORDERFLOW_DMARC_POLICY=reject
    refuses a forged From of a p=reject domain that came with a second address."""
    strictest: tuple[int, str, str] | None = None
    for domain in sorted(domains)[:MAX_POLICY_LOOKUPS]:
        try:
            record, record_domain, subdomain = discover_policy(domain, budget, psl)
        except DnsTempError:
            continue
        if record is not None and record_domain is not None:
            policy = record.sp if subdomain else record.p
            rank = (POLICIES.index(policy), policy, record_domain)
            strictest = rank if strictest is None or rank > strictest else strictest
    if strictest is None:
        return DmarcVerdict("fail", None, None, None, MULTIPLE_FROM_DOMAINS)
    return DmarcVerdict("fail", None, strictest[1], strictest[2], MULTIPLE_FROM_DOMAINS)


def check_dmarc(
    domains: Collection[str],
    spf: SpfVerdict | None,
    dkim: Sequence[DkimVerdict],
    budget: DnsBudget,
    psl: PublicSuffixList,
) -> DmarcVerdict:
    """The verdict for a message whose From headers name `domains` (see `from_domains`)."""
    author_domain, problem = from_domain(domains)
    if problem == MULTIPLE_FROM_DOMAINS:
        return _several_authors(domains, budget, psl)
    if author_domain is None:
        return DmarcVerdict("permerror", None, None, None, problem)
    try:
        record, record_domain, subdomain = discover_policy(author_domain, budget, psl)
    except DnsTempError:
        return DmarcVerdict("temperror", author_domain, None, None, "policy look-up timed out")
    if record is None:
        return DmarcVerdict("none", author_domain, None, None, "no DMARC record")
    policy = record.sp if subdomain else record.p
    spf_ok = (
        spf is not None
        and spf.result == "pass"
        and aligned(spf.domain, author_domain, record.aspf, psl)
    )
    dkim_ok = any(
        v.result == "pass" and aligned(v.domain, author_domain, record.adkim, psl) for v in dkim
    )
    if spf_ok or dkim_ok:
        result, reason = "pass", None
    elif (
        spf is not None
        and spf.result == "temperror"
        and aligned(spf.domain, author_domain, record.aspf, psl)
    ) or any(
        v.result == "temperror" and aligned(v.domain, author_domain, record.adkim, psl)
        for v in dkim
    ):
        result, reason = "temperror", "SPF or DKIM look-up timed out"
    else:
        result, reason = "fail", "no aligned SPF or DKIM pass"
    return DmarcVerdict(
        result, author_domain, policy, record_domain, reason, spf_ok, dkim_ok, record.pct
    )
