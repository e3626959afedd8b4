"""DKIM (RFC 6376): every signature of a message, RSA and Ed25519.

The body hash was already computed while the body streamed through the milter (`dkim_body`)
and the signature's bh= is compared here. The header signature is checked by `_verify_fast`:
dkimpy's own field validation and key parse, then our header selection, canonicalisation
and hash, and the signature through OpenSSL (`cryptography`) or libsodium (`nacl`), step by
step in dkimpy's order and with dkimpy's outcome at each (issue 14: building dkimpy's
objects cost more than the rest of the milter). A header block or signature of a shape it
is not sure of goes to dkimpy itself (`_verify_one`), so no verdict depends on which path
decided; tests/test_milter_dkim_verify.py holds both paths against dkimpy. Key look-ups go
through the check's DnsBudget.

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
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
import nacl.exceptions
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
)
from dkim.crypto import DigestTooLargeError

from orderflow_ingest.milter.dkim_body import BodyHashes, key_for
from orderflow_ingest.milter.dns import DnsBudget, DnsTempError

MAX_SIGNATURES = 8
MIN_RSA_BITS = 1024
# What re's \s matches in bytes: dkimpy removes it from tag values with re.sub(rb"\s+", ...);
# bytes.translate deletes the same set without a regex.
_WHITESPACE = b" \t\n\r\x0b\x0c"


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
    """Tags of one DKIM-Signature value, or None when it cannot be parsed: dkimpy's
    `parse_tag_value` (RFC 6376 3.2) without its per-tag regex. A tag name must start with
    an ASCII letter, a tag may appear once, a trailing semicolon is allowed; a
    property test holds it equal to dkimpy's."""
    tags: dict[bytes, bytes] = {}
    specs = value.strip().split(b";")
    if not specs[-1]:
        specs.pop()
    for spec in specs:
        name, equals, tag_value = spec.partition(b"=")
        name = name.strip()
        if not equals or not name[:1].isalpha() or name in tags:
            return None
        tags[name] = tag_value.strip()
    return tags


def register_body_hash(tags: dict[bytes, bytes] | None, body: BodyHashes) -> None:
    """At end of headers: make sure the body hash this signature needs will be computed."""
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
    return value.translate(None, _WHITESPACE).decode("ascii", "replace")


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
    except (ValueError, IndexError, TypeError, KeyError):
        # dkimpy lets some malformed input escape as Python's own errors: an Ed25519 b= that
        # is not 64 bytes (nacl's ValueError), i= equal to d= (IndexError), b= of bad base64
        # padding. Unanswered they became 451 at every retry; they are the sender's error.
        return "permerror", "malformed signature"
    if ok:
        return "pass", None
    return _not_verified(found)


def header_block(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The header block dkimpy parses: each (name, value ending in CRLF), then the empty line."""
    return b"".join(name + b":" + value for name, value in headers) + b"\r\n"


def verify_signatures(
    headers: Sequence[tuple[bytes, bytes]],
    signature_tags_list: Sequence[dict[bytes, bytes] | None],
    body: BodyHashes,
    budget: DnsBudget,
    l_policy: str = "record",
) -> list[DkimVerdict]:
    """One verdict per DKIM-Signature, top first. `headers` are the message's headers as
    dkimpy's parser gives them: (name, value after the colon ending in CRLF, continuation
    lines joined by CRLF). `signature_tags_list` holds the parsed tags of each
    DKIM-Signature (None: unparseable), parsed once at end of headers.
    `l_policy` is ORDERFLOW_DKIM_L_POLICY: what a pass whose l= leaves body unsigned is.

    Each signature is checked by `_verify_fast` (our header canonicalisation and hash,
    OpenSSL or libsodium for the signature, dkimpy's own field validation and key parse);
    whatever it is not sure of it leaves to dkimpy (`_verify_one`), so no verdict depends on
    which of the two decided. tests/test_milter_dkim_verify.py holds both against dkimpy."""
    verdicts: list[DkimVerdict] = []
    checker: _HeaderOnlyDKIM | None = None
    plain_headers = _plain_headers(headers)
    sig_headers = [h for h in headers if h[0].lower() == b"dkim-signature"]
    for idx, tags in enumerate(signature_tags_list):
        if idx >= MAX_SIGNATURES:
            too_many = f"more than {MAX_SIGNATURES} signatures, not verified"
            verdicts.append(_verdict(tags or {}, "policy", too_many))
            continue
        answer = None
        if plain_headers and tags is not None and idx < len(sig_headers):
            answer = _verify_fast(headers, sig_headers[idx], dict(tags), body, budget)
        if answer is None:
            if checker is None:  # one parse of the header block serves every signature
                checker = _HeaderOnlyDKIM(
                    header_block(headers), body, timeout=max(budget.remaining(), 0.001)
                )
            checker.signature_fields = {}
            answer = _verify_one(checker, idx, budget)
            # dkimpy parsed the signature's tags on its way; use ours if it did not get there.
            tags = checker.signature_fields or tags
        result, reason = answer
        verdicts.append(_verdict(tags or {}, result, reason, body, l_policy))
    return verdicts


# A header name as dkimpy's parser reads one (printable ASCII up to the first colon); a
# continuation line starts with white space. Headers of another shape go to dkimpy.
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_BARE_LINE = re.compile(rb"\n(?![ \t])")
# dkimpy's RE_BTAG (b= and its value, removed before hashing the signature header), with its
# folding white space written as the runs of white space it matches, and the value taken a
# run of base64 at a time rather than a character at a time: the same matches in a tenth
# of the time (a property test holds the two equal).
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=]+)*(?:\r?\n\Z)?")
_H_SEPARATOR = re.compile(rb"\s*:\s*")
_WSP_RUN = re.compile(rb"[\t ]+")
_MISSING = object()


def _plain_headers(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether dkimpy's parser would read the header block back as exactly `headers`."""
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name) or not value.endswith(b"\r\n"):
            return False
        if b"\n" in value[:-2] and _BARE_LINE.search(value[:-2]):
            return False
    return True


def _relaxed_value(value: bytes) -> bytes:
    """RFC 6376 3.4.2 on a header value, as dkimpy does it: unfold, runs of WSP to one space,
    strip, CRLF."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip() + b"\r\n"


def _select(
    headers: Sequence[tuple[bytes, bytes]], include: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """dkimpy's select_headers: each h= name takes the next instance from the bottom up; a
    name listed more often than present selects nothing more (oversigning)."""
    selected = []
    last: dict[bytes, int] = {}
    lowered = [name.lower() for name, _ in headers]
    for wanted in include:
        i = last.get(wanted, len(headers))
        while i > 0:
            i -= 1
            if lowered[i] == wanted:
                selected.append(headers[i])
                break
        last[wanted] = i
    return selected


def _verify_fast(
    headers: Sequence[tuple[bytes, bytes]],
    sig_header: tuple[bytes, bytes],
    sig: dict[bytes, bytes],
    body: BodyHashes,
    budget: DnsBudget,
) -> tuple[str, str | None] | None:
    """(result, reason) of one signature, each step in dkimpy's order with dkimpy's outcome
    (DKIM.verify with our verify_headerprep); None where dkimpy would raise something other
    than its own errors, so that `_verify_one` reproduces exactly that."""
    try:
        dkim.validate_signature_fields(sig)
    except dkim.DKIMException as error:
        return "permerror", _short_reason(error)
    except Exception:
        return None
    if sig[b"a"].lower() == b"rsa-sha1":
        return "policy", "rsa-sha1 is not accepted (RFC 8301)"
    key = key_for(sig)
    digest = body.digest(key) if key is not None else None
    if digest is None:
        return "permerror", "body hash not computable"
    try:
        expected = base64.b64decode(sig[b"bh"].translate(None, _WHITESPACE))
    except ValueError:
        return "permerror", "malformed bh="
    if digest != expected:
        return "fail", "body hash mismatch"
    include = [name.lower() for name in _H_SEPARATOR.split(sig[b"h"])]
    found: dict[str, Any] = {}
    key_name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    try:
        record = _key_function(budget, found)(key_name)
    except DnsTempError:
        return "temperror", "key look-up timed out"
    try:
        pk, keysize, ktag, seqtlsrpt = dkim.evaluate_pk(key_name, record)
    except (dkim.KeyFormatError, binascii.Error):
        return _not_verified(found)
    except dkim.DKIMException as error:
        return "permerror", _short_reason(error)
    except Exception:
        return None
    if seqtlsrpt:  # a key for TLS reports only (RFC 8460)
        return "permerror", "malformed signature"
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as error:
        return "permerror", _short_reason(dkim.MessageFormatError(f"invalid c= value: {error}"))
    if b"from" in include:  # dkimpy hashes one From more: a second From breaks the signature
        include.append(b"from")
    relaxed = policy.header_algorithm is Relaxed
    name, value = sig_header
    value = RE_BTAG.sub(b"\\1", value)
    if relaxed:
        signed = [(n.lower(), _relaxed_value(v)) for n, v in _select(headers, include)]
        name, value = name.lower(), _relaxed_value(value)
    else:
        signed = list(_select(headers, include))
    signed.append((name, value.rstrip()))  # hashed without its CRLF
    hashed = hashlib.sha256(b"".join(n + b":" + v for n, v in signed))
    try:
        signature = base64.b64decode(sig[b"b"].translate(None, _WHITESPACE))
    except Exception:
        return None
    if ktag == b"rsa":
        try:
            ok = dkim.RSASSA_PKCS1_v1_5_verify(hashed, signature, pk)
        except (TypeError, DigestTooLargeError):
            return "permerror", "unusable key"
        if ok and keysize < MIN_RSA_BITS:
            return "permerror", "unusable key"
    elif ktag == b"ed25519":
        try:
            pk.verify(hashed.digest(), signature)
            ok = True
        except nacl.exceptions.BadSignatureError:
            ok = False
        except Exception:
            return None
    else:  # dkimpy's UnknownKeyTypeError
        return "permerror", "malformed signature"
    return ("pass", None) if ok else _not_verified(found)


def _not_verified(found: dict[str, Any]) -> tuple[str, str | None]:
    """Why a signature did not verify, from what its key look-up found."""
    if found.get("key") == "missing":
        return "permerror", "no key for signature"
    key_problem = _key_problem(found["record"]) if found.get("key") == "found" else None
    if key_problem:
        return "permerror", key_problem
    return "fail", "signature did not verify"
