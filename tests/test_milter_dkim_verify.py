"""Our DKIM header verification (dkim_check._verify_fast) against dkimpy, differentially.

The milter checks a signature's header hash itself (canonicalisation, hash, OpenSSL or
libsodium) and leaves to dkimpy only what it is not sure of. Security rests on both giving
the same verdicts, so hypothesis generates signed messages (RSA 1024/2048 and Ed25519,
simple and relaxed, l=, oversigned and missing h= headers, one or two signatures) and
damages them (headers, body, key, x=, a=, c=, b=); for each:

- a signature passes with us exactly when `dkim.DKIM(message).verify(idx)` says True;
- every verdict (result and reason) equals the one of our dkimpy path (`_verify_one`), which
  the fast path replaces.

Plus the pieces on their own: the tag parser, the b= removal pattern and the relaxed header
canonicalisation, each against dkimpy's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import dkim
import dkim.util
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from milter_harness import FakeDns, ed25519_key, rsa_key, split_message

from orderflow_ingest.milter import dkim_check
from orderflow_ingest.milter.dkim_body import BodyHashes
from orderflow_ingest.milter.dns import DnsBudget

KEYS = {
    "rsa": rsa_key("r2048", "sender.test"),
    "rsa1024": rsa_key("r1024", "sender.test", bits=1024),
    "ed25519": ed25519_key("ed", "sender.test"),
    "other": rsa_key("other", "sender.test"),
}
WRONG = rsa_key("wrong", "sender.test")
NAMES = ["From", "To", "Subject", "Date", "Message-ID", "Reply-To", "Cc", "X-Order", "from"]


def _dns() -> FakeDns:
    fake = FakeDns()
    for key in KEYS.values():
        fake.txt(key.dns_name, key.public_record)
    return fake


@pytest.fixture(params=["dkimpy", "installed"])
def dkimpy_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    """Both with dkimpy as shipped and with dkimpy_fast installed (the daemon's state)."""
    from orderflow_ingest.milter import dkimpy_fast

    saved = (dkim.evaluate_pk, dkim.RSASSA_PKCS1_v1_5_verify)
    saved_crypto = (
        dkim.crypto.int2str,
        dkim.crypto.str2int,
        dkim.crypto.RSASSA_PKCS1_v1_5_verify,
    )
    if request.param == "installed":
        dkimpy_fast.install()
    yield
    dkim.evaluate_pk, dkim.RSASSA_PKCS1_v1_5_verify = saved
    dkim.crypto.int2str, dkim.crypto.str2int, dkim.crypto.RSASSA_PKCS1_v1_5_verify = saved_crypto


def milter_view(raw: bytes) -> tuple[list[tuple[bytes, bytes]], list[bytes], bytes]:
    """What the handler holds at end of message: headers as (name, value + CRLF), the
    DKIM-Signature values, the body (as Postfix hands them over; see the handler)."""
    pairs, body = split_message(raw)
    headers: list[tuple[bytes, bytes]] = []
    signatures: list[bytes] = []
    for name, value in pairs:
        value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        headers.append((name.encode(), value + b"\r\n"))
        if name.lower() == "dkim-signature":
            signatures.append(value)
    return headers, signatures, body


def ours(raw: bytes, dns: FakeDns, fast: bool = True) -> list[dkim_check.DkimVerdict]:
    headers, signatures, body = milter_view(raw)
    tags = [dkim_check.signature_tags(value) for value in signatures]
    hashes = BodyHashes()
    for t in tags:
        dkim_check.register_body_hash(t, hashes)
    for start in range(0, len(body), 700):
        hashes.update(body[start : start + 700])
    saved = dkim_check._verify_fast
    if not fast:
        dkim_check._verify_fast = lambda *args: None  # type: ignore[assignment]
    try:
        return dkim_check.verify_signatures(headers, tags, hashes, DnsBudget(dns, 5.0))
    finally:
        dkim_check._verify_fast = saved


def dkimpy_says(raw: bytes, dns: FakeDns, count: int) -> list[bool]:
    def lookup(name: bytes, timeout: float = 5) -> bytes:
        records = dns.records.get((name.decode().rstrip(".").lower(), "TXT"), [])
        return records[0][0] if records else b""

    answers = []
    for idx in range(count):
        try:
            answers.append(bool(dkim.DKIM(raw, minkey=1024).verify(idx, dnsfunc=lookup)))
        except Exception:
            answers.append(False)
    return answers


def assert_agree(raw: bytes, dns: FakeDns) -> list[dkim_check.DkimVerdict]:
    fast = ours(raw, dns)
    slow = ours(raw, dns, fast=False)
    assert [(v.result, v.reason) for v in fast] == [(v.result, v.reason) for v in slow]
    assert fast == slow
    expected = dkimpy_says(raw, dns, len(fast))
    assert [v.result == "pass" for v in fast] == expected
    return fast


# -- strategies ---------------------------------------------------------------------------------

_word = st.text(alphabet="abcXYZ019<>@.;=:,-", min_size=1, max_size=8)
_space = st.sampled_from([" ", "  ", "\t", " \t ", ""])
_fold = st.sampled_from(["\r\n\t", "\r\n ", "\r\n  \t"])


@st.composite
def header_value(draw: Any) -> str:
    parts = [draw(_space)]
    for _ in range(draw(st.integers(1, 4))):
        parts.append(draw(_word))
        parts.append(draw(st.one_of(_space, _fold)) if draw(st.booleans()) else " ")
    value = "".join(parts)
    return value.rstrip("\r\n\t ") + draw(st.sampled_from(["", " ", "\t"]))


@st.composite
def message(draw: Any) -> bytes:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=7))
    if "From" not in names:
        names.insert(draw(st.integers(0, len(names))), "From")
    head = "".join(f"{name}:{draw(header_value())}\r\n" for name in names)
    lines = draw(
        st.lists(
            st.text(alphabet="ab \t.", max_size=12).map(lambda s: s.replace("\r", "")),
            max_size=6,
        )
    )
    body = "".join(line + "\r\n" for line in lines) + draw(st.sampled_from(["", "\r\n", "x"]))
    return (head + "\r\n" + body).encode()


def sign(raw: bytes, key_name: str, draw: Any) -> bytes:
    key = KEYS[key_name]
    canon = (
        draw(st.sampled_from([b"simple", b"relaxed"])),
        draw(st.sampled_from([b"simple", b"relaxed"])),
    )
    present = [n.lower() for n in re.findall(rb"^([A-Za-z-]+):", raw.split(b"\r\n\r\n")[0], re.M)]
    include = draw(
        st.lists(
            st.sampled_from([*sorted(set(present) - {b"dkim-signature"}), b"cc", b"x-missing"]),
            max_size=6,
        )
    )
    include = (
        [b"from"] + include + ([b"from", b"subject"] if draw(st.booleans()) else [])
    )  # oversigned: listed more often than present
    return key.sign(raw, canonicalize=canon, include_headers=include, length=draw(st.booleans()))


DAMAGE = [
    "none",
    "header_value",
    "extra_from",
    "extra_header",
    "body",
    "body_appended",
    "wrong_key",
    "no_key",
    "revoked_key",
    "expired",
    "future",
    "rsa_sha1",
    "no_from_in_h",
    "canon_case",
    "bad_b",
    "short_b",
    "sig_whitespace",
    "i_outside_d",
]


def damage(raw: bytes, kind: str, dns: FakeDns, key_name: str, draw: Any) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    if kind == "header_value":
        lines = head.split(b"\r\n")
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i] + draw(st.sampled_from([b"x", b" ", b"\t", b"  y"]))
        head = b"\r\n".join(lines)
    elif kind == "extra_from":
        head += b"\r\nFrom: evil@attacker.test"
    elif kind == "extra_header":
        head = b"Subject: another\r\n" + head + b"\r\nCc: someone"
    elif kind == "body":
        body = body.replace(b"a", b"b", 1) if b"a" in body else body + b"z"
    elif kind == "body_appended":
        body += b"second order: 1000 x widget\r\n"
    elif kind == "wrong_key":
        dns.txt(KEYS[key_name].dns_name, WRONG.public_record)
    elif kind == "no_key":
        dns.records.pop((KEYS[key_name].dns_name, "TXT"), None)
    elif kind == "revoked_key":
        dns.txt(KEYS[key_name].dns_name, "v=DKIM1; k=rsa; p=")
    elif kind == "expired":
        head = head.replace(b"; s=", b"; x=1000000000; s=", 1)
    elif kind == "future":
        head = re.sub(rb"t=\d+", b"t=9999999999", head, count=1)
    elif kind == "rsa_sha1":
        head = head.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1)
    elif kind == "no_from_in_h":
        head = re.sub(rb"h=from ?: ?", b"h=", head, count=1)
    elif kind == "canon_case":
        head = head.replace(b"c=relaxed", b"c=Relaxed", 1).replace(b"c=simple", b"c=Simple", 1)
    elif kind == "bad_b":
        head = re.sub(rb"b=([A-Za-z0-9+/])", rb"b=!\1", head, count=1)
    elif kind == "short_b":
        head = re.sub(rb"(b=[^;]*?)[A-Za-z0-9+/]{4}(\s*)$", rb"\1\2", head, count=1, flags=re.M)
    elif kind == "sig_whitespace":
        head = head.replace(b"; d=", b";  d=", 1)
    elif kind == "i_outside_d":
        head = head.replace(b"i=@sender.test", b"i=@other.test", 1)
    return head + b"\r\n\r\n" + body


@pytest.mark.usefixtures("dkimpy_mode")
@pytest.mark.slow  # seconds of RSA signing; the pieces below stay in the fast tier
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_verdicts_agree_with_dkimpy(data: st.DataObject) -> None:
    dns = _dns()
    raw = data.draw(message())
    key_name = data.draw(st.sampled_from(["rsa", "rsa1024", "ed25519"]))
    raw = sign(raw, key_name, data.draw)
    if data.draw(st.booleans()):  # a second signature above the first
        raw = sign(raw, "other", data.draw)
    kind = data.draw(st.sampled_from(DAMAGE))
    raw = damage(raw, kind, dns, key_name, data.draw)
    verdicts = assert_agree(raw, dns)
    if kind == "none" and raw.lower().count(b"\nfrom:") + raw.lower().startswith(b"from:") == 1:
        # (dkimpy hashes one From more than h= lists, so a second From fails: bug#644046)
        assert all(v.result == "pass" for v in verdicts), verdicts


@pytest.mark.usefixtures("dkimpy_mode")
def test_undamaged_signatures_pass_by_the_fast_path() -> None:
    """The common case never leaves the fast path (were it to, the speed would be gone)."""
    dns = _dns()
    raw = KEYS["rsa"].sign(
        b"From: a@sender.test\r\nTo: b@orders.test\r\nSubject: x\r\n\r\nbody\r\n",
        canonicalize=(b"relaxed", b"relaxed"),
    )
    headers, signatures, body = milter_view(raw)
    tags = dkim_check.signature_tags(signatures[0])
    assert tags is not None
    hashes = BodyHashes()
    dkim_check.register_body_hash(tags, hashes)
    hashes.update(body)
    sig_header = next(h for h in headers if h[0].lower() == b"dkim-signature")
    answer = dkim_check._verify_fast(headers, sig_header, tags, hashes, DnsBudget(dns, 5.0))
    assert answer == ("pass", None)


@pytest.mark.usefixtures("dkimpy_mode")
@pytest.mark.parametrize("kind", [k for k in DAMAGE if k != "header_value"])
def test_each_damage_on_a_relaxed_rsa_signature(kind: str) -> None:
    dns = _dns()
    raw = KEYS["rsa"].sign(
        b"From: a@sender.test\r\nTo:  b@orders.test\r\nSubject: x\r\n\tfolded\r\n\r\nbody a\r\n",
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"from", b"subject", b"cc"],
    )
    verdicts = assert_agree(damage(raw, kind, dns, "rsa", None), dns)
    if kind in ("none", "sig_whitespace", "body_appended"):
        # a changed space inside the signature's tag list is no change to relaxed c14n;
        # appending after the signed body breaks the body hash (no l= here)
        assert verdicts[0].result == ("fail" if kind == "body_appended" else "pass")
    else:
        assert verdicts[0].result != "pass", kind


# -- the pieces ---------------------------------------------------------------------------------

_tag_text = st.text(alphabet="ab1 \t=;:_-\r\n", max_size=30).map(str.encode)


@given(_tag_text)
def test_tag_parser_agrees_with_dkimpy(value: bytes) -> None:
    try:
        expected: dict[bytes, bytes] | None = dict(dkim.util.parse_tag_value(value))
    except dkim.util.InvalidTagValueList:
        expected = None
    assert dkim_check.signature_tags(value) == expected


_btag_text = st.text(alphabet="b= \t\r\n;aA0+/h", max_size=40).map(str.encode)


@settings(max_examples=300)
@given(_btag_text)
def test_btag_pattern_agrees_with_dkimpy(value: bytes) -> None:
    assert dkim_check.RE_BTAG.sub(b"\\1", value) == dkim.RE_BTAG.sub(b"\\1", value)


@settings(max_examples=300)
@given(st.text(alphabet="a \t\r\n\x0b", max_size=30).map(str.encode))
def test_relaxed_header_value_agrees_with_dkimpy(value: bytes) -> None:
    [(_, expected)] = Relaxed.canonicalize_headers([(b"X", value)])
    assert dkim_check._relaxed_value(value) == expected


def test_whitespace_set_is_what_re_calls_white_space() -> None:
    """dkimpy strips tag values with re.sub(rb"\\s+", b"", ...); we delete the same bytes."""
    expected = bytes(i for i in range(256) if re.match(rb"\s", bytes([i])))
    assert sorted(dkim_check._WHITESPACE) == sorted(expected)
