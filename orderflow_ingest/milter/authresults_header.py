"""Our one Authentication-Results header (RFC 8601), written as authres writes it.

`header_value` renders the few clauses we write directly (authres builds an object per
result and per property and runs two uncompiled regexes per value: 10-20 us a message);
`authres_header_value`, the same through authres, is the reference a property test holds it
to, byte for byte.

Every value that goes into it came from the sender (envelope address, HELO, d= and s= of a
signature, the From domain), so each is checked against the syntax it must have and left out
when it does not fit: a local part such as `a;dkim=pass` must not be able to add a result to
our header. Which existing headers claim our authserv-id is decided by the shared
`orderflow_ingest.auth_verdicts.claims` rule, as each header arrives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres
import authres.dmarc

from orderflow_ingest.milter.dkim_check import DkimVerdict
from orderflow_ingest.milter.dmarc import DmarcVerdict
from orderflow_ingest.milter.spf_check import SpfVerdict

HEADER_NAME = "Authentication-Results"

_DOMAIN = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
_IP_LITERAL = re.compile(r"^\[[0-9A-Fa-f:.]+\]$|^[0-9A-Fa-f:.]+$")
_ATOM_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._+/=-]{1,128}$")


def _domain(value: str | None) -> str | None:
    return value.lower() if value and _DOMAIN.match(value) else None


def _address(value: str | None) -> str | None:
    """local@domain when the local part is a plain dot-atom, else @domain (RFC 8601 2.7.2)."""
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not _domain(domain):
        return None
    if _ATOM_LOCAL.match(local) and ".." not in local:
        return f"{local}@{domain.lower()}"
    return f"@{domain.lower()}"


def _token(value: str | None) -> str | None:
    return value if value and _TOKEN.match(value) else None


def spf_result(verdict: SpfVerdict) -> authres.SPFAuthenticationResult:
    if verdict.identity == "helo":
        helo = verdict.helo if verdict.helo and _IP_LITERAL.match(verdict.helo) else None
        return authres.SPFAuthenticationResult(
            result=verdict.result, smtp_helo=_domain(verdict.helo) or helo
        )
    return authres.SPFAuthenticationResult(
        result=verdict.result, smtp_mailfrom=_address(verdict.mailfrom)
    )


def dkim_result(verdict: DkimVerdict) -> authres.DKIMAuthenticationResult:
    result = authres.DKIMAuthenticationResult(
        result=verdict.result,
        reason=verdict.reason,
        header_d=_domain(verdict.domain),
        header_s=_token(verdict.selector),
        header_a=_token(verdict.algorithm),
    )
    prefix = _token(verdict.signature_prefix)
    if prefix:
        result.properties.append(authres.AuthenticationResultProperty("header", "b", prefix))
    if verdict.length is not None:
        # l= of the signature (RFC 6376 3.5), as header.a/s/b are its other tags; the
        # reason says how much of the body came after it, unsigned.
        length = str(verdict.length)
        result.properties.append(authres.AuthenticationResultProperty("header", "l", length))
    return result


def dmarc_result(verdict: DmarcVerdict) -> authres.dmarc.DMARCAuthenticationResult:
    return authres.dmarc.DMARCAuthenticationResult(
        result=verdict.result,
        reason=verdict.reason if verdict.result != "pass" else None,
        header_from=_domain(verdict.from_domain),
        policy=verdict.policy,
    )


def authres_header_value(
    authserv_id: str,
    spf: SpfVerdict | None,
    dkim: Sequence[DkimVerdict],
    dmarc: DmarcVerdict | None,
) -> str:
    """The header value, folded one result per line, with the leading space we negotiate
    to send ourselves (SMFIP_HDR_LEADSPC)."""
    results: list[authres.core.BaseAuthenticationResult] = []
    if spf is not None:
        results.append(spf_result(spf))
    if dkim:
        results.extend(dkim_result(verdict) for verdict in dkim)
    else:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    if dmarc is not None:
        results.append(dmarc_result(dmarc))
    # authres renders a header on one line; we fold between results (RFC 5322 2.2.3), never
    # inside one, where a quoted reason may contain "; ".
    return " " + authserv_id.lower() + "".join(";\n\t" + str(result) for result in results)


# authres's QuotableValue.quote_if_needed and AuthenticationResult's reason clean-up.
_RFC2045_TOKEN = re.compile("^" + authres.core.RFC2045_TOKEN_PATTERN + "$")
_QUOTE_ESCAPE = re.compile(r'(["\\])')
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _quoted(value: str) -> str:
    if "@" in value or _RFC2045_TOKEN.match(value):
        return value
    return '"' + _QUOTE_ESCAPE.sub(r"\\\1", value) + '"'


def _clause(
    method: str, result: str, reason: str | None, *properties: tuple[str, str | None]
) -> str:
    parts = [method, "=", result.lower()]
    if reason:
        parts.append(" reason=" + _quoted(_UNPRINTABLE.sub("?", reason)))
    for name, value in properties:
        if value:
            parts.append(f" {name}={_quoted(value)}")
    return "".join(parts)


def _spf_clause(verdict: SpfVerdict) -> str:
    if verdict.identity == "helo":
        helo = verdict.helo if verdict.helo and _IP_LITERAL.match(verdict.helo) else None
        return _clause("spf", verdict.result, None, ("smtp.helo", _domain(verdict.helo) or helo))
    return _clause("spf", verdict.result, None, ("smtp.mailfrom", _address(verdict.mailfrom)))


def _dkim_clause(verdict: DkimVerdict) -> str:
    return _clause(
        "dkim",
        verdict.result,
        verdict.reason,
        ("header.d", _domain(verdict.domain)),
        ("header.a", _token(verdict.algorithm)),
        ("header.s", _token(verdict.selector)),
        ("header.b", _token(verdict.signature_prefix)),
        ("header.l", str(verdict.length) if verdict.length is not None else None),
    )


def _dmarc_clause(verdict: DmarcVerdict) -> str:
    return _clause(
        "dmarc",
        verdict.result,
        verdict.reason if verdict.result != "pass" else None,
        ("header.from", _domain(verdict.from_domain)),
        ("policy.dmarc", verdict.policy),
    )


def header_value(
    authserv_id: str,
    spf: SpfVerdict | None,
    dkim: Sequence[DkimVerdict],
    dmarc: DmarcVerdict | None,
) -> str:
    """The header value, folded one result per line, with the leading space we negotiate
    to send ourselves (SMFIP_HDR_LEADSPC): what `authres_header_value` gives, cheaper."""
    clauses: list[str] = []
    if spf is not None:
        clauses.append(_spf_clause(spf))
    if dkim:
        clauses.extend(_dkim_clause(verdict) for verdict in dkim)
    else:
        clauses.append("dkim=none")
    if dmarc is not None:
        clauses.append(_dmarc_clause(dmarc))
    return " " + authserv_id.lower() + "".join(";\n\t" + clause for clause in clauses)


def indices_to_remove(claimed: Sequence[bool]) -> list[int]:
    """1-based positions of the Authentication-Results headers that claimed our authserv-id
    (`claimed` is one flag per such header, in message order), highest first, so that each
    removal leaves the lower indices valid whatever the MTA's numbering after a delete."""
    return [index for index in range(len(claimed), 0, -1) if claimed[index - 1]]
