"""DKIM (RFC 6376): every signature of a message, RSA and Ed25519, through dkimpy.

dkimpy checks the header signature; the body hash was already computed while the body
streamed through the milter (`dkim_body`), so dkimpy is handed the header block alone and the
signature's bh= is compared here. Key look-ups go through the check's DnsBudget.

Results, as RFC 8601 names them:
  pass       signature and body hash verify
  fail       body hash mismatch, or the signature does not verify against the key
  permerror  malformed or expired signature, no key in DNS, unusable key
  temperror  the key look-up timed out or the budget was spent
  policy     rsa-sha1 (RFC 8301), or more signatures than we are willing to verify

A signature with l= (RFC 6376 3.5) signs only the first l bytes of the canonical body:
anyone may append content after them (a second order, a different bank account) and the
signature still verifies. The verdict records l= (`header.l` in our header) and, when the
body goes on past it, how many bytes are unsigned; with ORDERFLOW_DKIM_L_POLICY=fail such a
signature fails.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util

from orderflow_ingest.milter.dkim_body import BodyHashes, key_for
from orderflow_ingest.milter.dns import DnsBudget, DnsTempError

MAX_SIGNATURES = 8
MIN_RSA_BITS = 1024


@dataclass(frozen=True)
class DkimVerdict:
    result: str
    domain: str | None  # d=
    selector: str | None  # s=
    algorithm: str | None  # a=
    identity: str | None  # i=
    signature_prefix: str | None  # first 8 characters of b= (RFC 6008 header.b)
    reason: str | None
    length: int | None = None  # l=: the signature covers only this much of the body
    unsigned_bytes: int | None = None  # canonical body bytes after l=, which nobody signed


def signature_tags(value: bytes) -> dict[bytes, bytes] | None:
    """Tags of one DKIM-Signature value, or None when it cannot be parsed."""
    try:
        return dict(dkim.util.parse_tag_value(value))
    except Exception:
        return None


def register_body_hash(value: bytes, body: BodyHashes) -> None:
    """At end of headers: make sure the body hash this signature needs will be computed."""
    tags = signature_tags(value)
    if tags is not None:
        key = key_for(tags)
        if key is not None:
            body.want(key)


class _SignatureProblem(Exception):
    """Raised inside dkimpy's flow to carry our own classification out of it."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


class _HeaderOnlyDKIM(dkim.DKIM):
    """dkimpy's DKIM, with the body hash checked against our streamed digest."""

    def __init__(self, message: bytes, body: BodyHashes, timeout: float):
        super().__init__(message, minkey=MIN_RSA_BITS, timeout=timeout)
        self._body = body

    def verify_headerprep(self, idx: int = 0) -> Any:
        try:
            prep = super().verify_headerprep(idx)
        except dkim.DKIMException as error:
            raise _SignatureProblem("permerror", _short_reason(error)) from None
        if not prep:
            return prep
        sig = prep[0]
        if sig.get(b"a", b"").lower() == b"rsa-sha1":
            raise _SignatureProblem("policy", "rsa-sha1 is not accepted (RFC 8301)")
        key = key_for(sig)
        digest = self._body.digest(key) if key is not None else None
        if digest is None:
            raise _SignatureProblem("permerror", "body hash not computable")
        try:
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
        except ValueError:
            raise _SignatureProblem("permerror", "malformed bh=") from None
        if digest != expected:
            raise _SignatureProblem("fail", "body hash mismatch")
        # The body is verified; dkimpy skips its own body check when bh= is absent. The
        # header hash is computed from the raw DKIM-Signature header, so bh= is still in it.
        del sig[b"bh"]
        return prep


def _short_reason(error: Exception) -> str:
    """A fixed text per error class: exception messages carry sender-controlled bytes."""
    text = str(error).lower()
    if "expired" in text:
        return "signature expired"
    if "future" in text:
        return "signature timestamp in the future"
    if "missing" in text:
        return "signature lacks a required tag"
    if "subdomain" in text:
        return "i= is not within d="
    if isinstance(error, dkim.KeyFormatError):
        return "unusable key"
    return "malformed signature"


def _key_function(budget: DnsBudget, found: dict[str, Any]) -> Callable[..., bytes]:
    """dkimpy's dnsfunc, through our budget; records what the look-up found."""

    def lookup(name: bytes | str, timeout: float = 0) -> bytes:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        records = budget.txt(text)  # DnsTempError propagates out of dkimpy
        if not records:
            found["key"] = "missing"
            return b""
        dkim_records = [r for r in records if r.lstrip().startswith(b"v=DKIM1")]
        found["key"] = "found"
        found["record"] = (dkim_records or records)[0]
        return found["record"]

    return lookup


def _key_problem(record: bytes) -> str | None:
    """Why a key record cannot verify anything, or None if it is usable. Only asked after a
    failed verification: dkimpy parsed the key already, and a second parse costs time."""
    try:
        dkim.evaluate_pk(b"key", record)
    except Exception:
        return "key revoked" if b"p=;" in record.replace(b" ", b"") + b";" else "unusable key"
    return None


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return re.sub(rb"\s+", b"", value).decode("ascii", "replace")


L_POLICIES = ("record", "fail")


def _verdict(
    tags: dict[bytes, bytes],
    result: str,
    reason: str | None,
    body: BodyHashes | None = None,
    l_policy: str = "record",
) -> DkimVerdict:
    b_value = _text(tags.get(b"b"))
    key = key_for(tags) if body is not None and b"l" in tags else None
    length = unsigned = None
    if key is not None and key.length is not None and body is not None:
        length = key.length
        total = body.canonical_length(key.relaxed)
        unsigned = max(0, total - length) if total is not None else None
        if unsigned and result == "pass":
            if l_policy == "fail":
                result, reason = "fail", f"l= leaves {unsigned} body bytes unsigned"
            else:
                reason = f"l= leaves {unsigned} body bytes unsigned"
    return DkimVerdict(
        result=result,
        domain=(_text(tags.get(b"d")) or "").lower() or None,
        selector=_text(tags.get(b"s")),
        algorithm=_text(tags.get(b"a")),
        identity=_text(tags.get(b"i")),
        signature_prefix=b_value[:8] if b_value else None,
        reason=reason,
        length=length,
        unsigned_bytes=unsigned,
    )


def _verify_one(checker: _HeaderOnlyDKIM, idx: int, budget: DnsBudget) -> tuple[str, str | None]:
    """(result, reason) of signature `idx`."""
    found: dict[str, Any] = {}
    try:
        ok = checker.verify(idx=idx, dnsfunc=_key_function(budget, found))
    except _SignatureProblem as problem:
        return problem.result, problem.reason
    except DnsTempError:
        return "temperror", "key look-up timed out"
    except dkim.DKIMException as error:
        return "permerror", _short_reason(error)
    if ok:
        return "pass", None
    if found.get("key") == "missing":
        return "permerror", "no key for signature"
    key_problem = _key_problem(found["record"]) if found.get("key") == "found" else None
    if key_problem:
        return "permerror", key_problem
    return "fail", "signature did not verify"


def verify_signatures(
    header_block: bytes,
    signature_values: list[bytes],
    body: BodyHashes,
    budget: DnsBudget,
    l_policy: str = "record",
) -> list[DkimVerdict]:
    """One verdict per DKIM-Signature, top first. `header_block` ends with the empty line.
    `l_policy` is ORDERFLOW_DKIM_L_POLICY: what a pass whose l= leaves body unsigned is."""
    verdicts: list[DkimVerdict] = []
    checker: _HeaderOnlyDKIM | None = None
    for idx, value in enumerate(signature_values):
        if idx >= MAX_SIGNATURES:
            too_many = f"more than {MAX_SIGNATURES} signatures, not verified"
            verdicts.append(_verdict(signature_tags(value) or {}, "policy", too_many))
            continue
        if checker is None:  # one parse of the header block serves every signature
            checker = _HeaderOnlyDKIM(header_block, body, timeout=max(budget.remaining(), 0.001))
        checker.signature_fields = {}
        result, reason = _verify_one(checker, idx, budget)
        # dkimpy parsed the signature's tags on its way; parse here only if it did not get there.
        tags = checker.signature_fields or signature_tags(value) or {}
        verdicts.append(_verdict(tags, result, reason, body, l_policy))
    return verdicts
