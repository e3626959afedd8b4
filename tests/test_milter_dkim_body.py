"""The streamed DKIM body hash equals dkimpy's whole-body hash, for any body and chunking."""

from __future__ import annotations

import hashlib
import re
import time

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from orderflow_ingest.milter import dkim_body
from orderflow_ingest.milter.dkim_body import BodyHasher, BodyHashKey, key_for

# Bodies made of the bytes that matter to canonicalization.
bodies = st.lists(
    st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"  \r\n"]), max_size=60
).map(b"".join)


def reference(body: bytes, relaxed: bool, length: int | None) -> bytes:
    """What dkimpy hashes: its parser's line normalisation, then its canonicalization."""
    _headers, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + body)
    policy = CanonicalizationPolicy.from_c_value(b"simple/relaxed" if relaxed else b"simple")
    canonical = policy.canonicalize_body(parsed)
    if length is not None:
        canonical = canonical[:length]
    return hashlib.sha256(canonical).digest()


def streamed(body: bytes, relaxed: bool, length: int | None, cuts: list[int]) -> bytes:
    hasher = BodyHasher(BodyHashKey(relaxed, "sha256", length))
    start = 0
    for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        hasher.update(body[start:cut])
        start = cut
    return hasher.digest()


@settings(max_examples=600, deadline=None)
@given(
    body=bodies,
    relaxed=st.booleans(),
    length=st.one_of(st.none(), st.integers(0, 40)),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_streamed_hash_matches_dkimpy(
    body: bytes, relaxed: bool, length: int | None, cuts: list[int]
) -> None:
    assert streamed(body, relaxed, length, cuts) == reference(body, relaxed, length)


@settings(max_examples=300, deadline=None)
@given(body=bodies, relaxed=st.booleans(), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_overlong_lines_flushed_early_hash_the_same(
    body: bytes, relaxed: bool, cuts: list[int]
) -> None:
    # A line longer than the flush threshold is hashed in part before it ends.
    saved = dkim_body._FLUSH_AT
    dkim_body._FLUSH_AT = 3
    try:
        assert streamed(body, relaxed, None, cuts) == reference(body, relaxed, None)
    finally:
        dkim_body._FLUSH_AT = saved


@pytest.mark.parametrize(
    ("body", "relaxed"),
    [(b"", False), (b"", True), (b"\r\n\r\n", False), (b"\r\n\r\n", True), (b"x", True)],
)
def test_edge_bodies(body: bytes, relaxed: bool) -> None:
    assert streamed(body, relaxed, None, []) == reference(body, relaxed, None)


def test_memory_does_not_grow_with_a_line_that_never_ends() -> None:
    hasher = BodyHasher(BodyHashKey(False, "sha256", None))
    for _ in range(200):
        hasher.update(b"x" * 65536)
    assert hasher.kept_bytes <= 65536 + 1


def test_key_for_signature_tags() -> None:
    assert key_for({b"a": b"rsa-sha256", b"c": b"relaxed/relaxed"}) == BodyHashKey(
        True, "sha256", None
    )
    assert key_for({b"a": b"ed25519-sha256", b"l": b"10"}) == BodyHashKey(False, "sha256", 10)
    assert key_for({b"a": b"rsa-sha256", b"c": b"relaxed"}) == BodyHashKey(False, "sha256", None)
    assert key_for({b"a": b"rsa-sha1"}) is None
    assert key_for({b"a": b"rsa-sha256", b"c": b"weird/simple"}) == BodyHashKey(
        False, "sha256", None
    )
    assert key_for({b"a": b"rsa-sha256", b"c": b"simple/weird"}) is None
    assert key_for({b"a": b"rsa-sha256", b"l": b"-1"}) is None


# -- dkimpy_fast: the OpenSSL path gives dkimpy's own answers ----------------------------------


def test_fast_rsa_verify_agrees_with_dkimpy() -> None:
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from orderflow_ingest.milter import dkimpy_fast

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    for message in (b"order 1", b"order 2", b"x" * 1000):
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        digest = hashlib.sha256(message)
        for candidate in (signature, signature[:-1] + bytes([signature[-1] ^ 1])):
            fast = dkimpy_fast.rsassa_pkcs1_v1_5_verify(digest, candidate, public)
            slow = dkimpy_fast._original_verify(digest, candidate, public)
            assert fast == slow
    # A signature whose leading zero byte a signer dropped: dkimpy accepts it, so must we.
    for attempt in range(2000):
        message = b"po %d" % attempt
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if signature[0] == 0:
            digest = hashlib.sha256(message)
            assert dkimpy_fast._original_verify(digest, signature[1:], public)
            assert dkimpy_fast.rsassa_pkcs1_v1_5_verify(digest, signature[1:], public)
            break


def test_fast_int_conversions_agree_with_dkimpy() -> None:
    import random

    import dkim.crypto

    from orderflow_ingest.milter import dkimpy_fast

    dkimpy_fast.install()  # what the milter's start-up does
    original_int2str = dkimpy_fast._original_int2str
    original_str2int = dkimpy_fast._original_str2int
    for n in (0, 1, 255, 256, 2**2047 + 12345, random.getrandbits(2048)):
        for length in (-1, 256, 300):
            if length != -1 and n.bit_length() > length * 8:
                continue
            assert dkimpy_fast.int2str(n, length) == original_int2str(n, length)
        data = bytes(original_int2str(n))
        assert dkimpy_fast.str2int(data) == original_str2int(data)
    assert dkim.crypto.int2str is dkimpy_fast.int2str


def test_cached_key_parsing_agrees_with_dkimpy() -> None:
    import dkim
    import pytest as _pytest

    from orderflow_ingest.milter import dkimpy_fast

    dkimpy_fast.install()  # what the milter's start-up does
    record = b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    assert dkim.evaluate_pk is dkimpy_fast.evaluate_pk
    first = dkim.evaluate_pk(b"a._domainkey.x.test.", record)
    again = dkim.evaluate_pk(b"b._domainkey.x.test.", record)
    assert first is again  # parsed once
    assert first[2] == dkimpy_fast._original_evaluate_pk(b"n", record)[2] == b"ed25519"
    for bad in (b"", b"v=DKIM1; k=rsa; p=", b"v=DKIM1; p=bm90IGEga2V5"):
        with _pytest.raises(dkim.KeyFormatError):
            dkim.evaluate_pk(b"c._domainkey.x.test.", bad)


# Item 7 (issue 10): bodies an attacker shapes so that a hasher keeps, and rescans, more and
# more of them. Each is fed in libmilter's largest chunks, as Postfix sends a body.
ADVERSARIAL = {
    "spaces": b" \t  \t \t\t   ",  # white space, no line end ever
    "cr_ws": b" \r",  # a CR inside white space looked like trailing white space
    "tab_cr": b"\t\t\r\r ",
    "runs": b" " * 20000 + b"x \r\n",  # long runs inside lines that do end
    "ws_lines": b" \t \r\n",
}
CHUNK = 65535


class CountingRegex:
    """Stands in for a compiled regex and counts the bytes handed to it."""

    def __init__(self, pattern: re.Pattern[bytes], counter: list[int]):
        self._pattern = pattern
        self._counter = counter

    def sub(self, repl: bytes, data: bytes) -> bytes:
        self._counter[0] += len(data)
        return self._pattern.sub(repl, data)


def _feed(unit: bytes, size: int, relaxed: bool) -> int:
    """The largest partial line kept between chunks while hashing `size` bytes of `unit`."""
    data = (unit * (size // len(unit) + 1))[:size]
    hasher = BodyHasher(BodyHashKey(relaxed, "sha256", None))
    largest = 0
    for start in range(0, len(data), CHUNK):
        hasher.update(data[start : start + CHUNK])
        largest = max(largest, hasher.kept_bytes)
    hasher.digest()
    return largest


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
@pytest.mark.parametrize("relaxed", [True, False])
def test_item7_relaxed_body_hash_linear_in_whitespace_runs(
    shape: str, relaxed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work per chunk is bounded by a constant, so the total is linear in the body.

    Two counts stand for the work, not a clock: the unfinished line kept between chunks
    (each chunk is joined to it and scanned with it: on main a white-space body was kept
    whole, 8 MiB rescanned 128 times) must stay under the flush threshold plus one chunk at
    any size; and the bytes handed to the canonicalization regexes must grow in proportion
    to the body.
    """
    counter = [0]
    monkeypatch.setattr(dkim_body, "_WSP_RUN", CountingRegex(dkim_body._WSP_RUN, counter))
    bound = dkim_body._FLUSH_AT + CHUNK
    figures = {}
    for size in (1 << 20, 4 << 20):
        counter[0] = 0
        largest = _feed(ADVERSARIAL[shape], size, relaxed)
        figures[size] = counter[0]
        assert largest <= bound, f"{shape}: kept {largest} bytes of one unfinished line"
        assert counter[0] <= 2 * size + bound, f"{shape}: {counter[0]} bytes through regexes"
    assert figures[4 << 20] <= 4 * figures[1 << 20] + 2 * bound


def test_item7_long_runs_inside_lines_cost_no_backtracking() -> None:
    """A regex such as `[\t ]+\n` rescans a run from each of its bytes when no line end
    follows it (dkimpy's own cost: 45 s per MiB of 20 000-space runs; main's `_relax` had it).
    Compressing runs first needs no backtracking: 1 MiB costs about 5 ms of CPU here. The
    bound is CPU time with a margin of hundreds: on main 256 KiB alone take 12 s."""
    started = time.process_time()
    _feed(ADVERSARIAL["runs"], 1 << 20, relaxed=True)
    assert time.process_time() - started < 3.0


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
@pytest.mark.parametrize("relaxed", [True, False])
def test_item7_adversarial_bodies_hash_as_dkimpy_does(shape: str, relaxed: bool) -> None:
    """The bounded state changes nothing: small threshold, same hash as dkimpy's."""
    unit = ADVERSARIAL[shape][:200] + ADVERSARIAL[shape][-5:]
    body = unit * 7 + b"tail \t "
    saved = dkim_body._FLUSH_AT
    dkim_body._FLUSH_AT = 5
    try:
        for cuts in ([], [3, 9, 10, 50], list(range(0, len(body), 7))):
            assert streamed(body, relaxed, None, cuts) == reference(body, relaxed, None)
    finally:
        dkim_body._FLUSH_AT = saved
