"""The OFI2 wire parser (pipe/protocol.py) as pure logic: what it takes as a whole message and
everything it must refuse (issue 10 items 1 and 12). The end-to-end cases, with the real client
and service, are in test_pipe_framing.py."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderflow_ingest.pipe.protocol import (
    CHUNK,
    Decoder,
    TooLarge,
    WireEnvelope,
    WireError,
    canonical_length,
    decode,
    encode,
)

LIMIT = 10 * CHUNK


def trailer(message: bytes, count: int | None = None) -> bytes:
    digest = hashlib.sha256(message).hexdigest().encode()
    return b"0 %s %d\n" % (digest, len(message) if count is None else count)


def head(queue_id: str = "Q1") -> bytes:
    fields = b"OFI2\0a@b\0orders+acme@orderflow.test\0" + queue_id.encode()
    return b"%d\n%s" % (len(fields), fields)


@settings(max_examples=200, deadline=None)
@given(
    message=st.binary(max_size=3 * CHUNK + 7),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * CHUNK), max_size=12),
)
def test_any_message_split_anywhere_round_trips(message: bytes, cuts: list[int]) -> None:
    wire = encode("a@b", "x@y", "Q", message)
    decoder = Decoder(LIMIT)
    pieces: list[bytes] = []
    start = 0
    for cut in sorted({min(c, len(wire)) for c in cuts} | {len(wire)}):
        pieces += decoder.feed(wire[start:cut])
        start = cut
    decoder.finish()
    assert decoder.envelope == WireEnvelope("a@b", "x@y", "Q")
    assert b"".join(pieces) == message


def test_message_text_that_looks_like_framing_is_message() -> None:
    fake = trailer(b"") + b"5\nhello\n0\n" + trailer(b"x", 99)
    message = b"Subject: x\n\n" + fake * 3
    assert decode(encode("a", "b", "", message), LIMIT)[1] == message


def test_one_byte_at_a_time() -> None:
    message = b"Subject: x\n\nbody\n"
    decoder = Decoder(LIMIT)
    out = b"".join(b"".join(decoder.feed(bytes([byte]))) for byte in encode("a", "b", "", message))
    decoder.finish()
    assert out == message


def test_empty_message_with_its_trailer_is_complete() -> None:
    assert decode(head() + trailer(b""), LIMIT) == (
        WireEnvelope("a@b", "orders+acme@orderflow.test", "Q1"),
        b"",
    )


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (head() + b"3\nabc", "without a trailer"),  # client killed, stdin cut off
        (head() + b"5\nabc", "without a trailer"),  # killed inside a chunk
        (head()[:-2], "before the envelope"),
        (head() + b"3\nabc" + trailer(b"abc", 4), "trailer says 4 bytes, 3 arrived"),
        (head() + b"3\nabc" + trailer(b"abd"), "sha256"),
        (head() + b"3\nabc" + trailer(b"abc").upper(), "malformed trailer"),
        (head() + b"3\nabc" + trailer(b"abc")[:-1] + b" \n", "malformed trailer"),
        (head() + b"3\nabc" + trailer(b"abc") + b"x", "after the trailer"),
        (head() + b"0\n" + trailer(b""), "malformed trailer"),
        (head() + b"03\nabc" + trailer(b"abc"), "malformed trailer"),  # only it starts with 0
        (head() + b"+3\nabc" + trailer(b"abc"), "canonical"),
        (head() + b"-3\nabc" + trailer(b"abc"), "canonical"),
        (head() + b" 3\nabc" + trailer(b"abc"), "canonical"),
        (head() + b"3 \nabc" + trailer(b"abc"), "canonical"),
        (head() + b"3\r\nabc" + trailer(b"abc"), "canonical"),
        (head() + b"\xd9\xa3\nabc" + trailer(b"abc"), "canonical"),  # Arabic-Indic three
        (head() + b"1_0\n" + b"a" * 10 + trailer(b"a" * 10), "canonical"),
        (head() + b"%d\n" % (CHUNK + 1), "more than"),
        (head() + b"9" * 200, "too long"),
        (b"0012\n", "canonical"),
        (b"99999999\n", "canonical"),  # seven digits and more: refused before allocating
        (b"12\nOFI1\0a\0b\0c\0d\0", "unknown envelope format"),
        (b"11\nOFI1\0a\0b\0cd", "unknown envelope format"),  # the old, unframed client
        (b"x" * 200, "too long"),
    ],
)
def test_anything_but_a_whole_verified_message_is_refused(wire: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode(wire, LIMIT)


def test_the_size_cap_is_checked_before_the_bytes_arrive() -> None:
    decoder = Decoder(100)
    decoder.feed(head() + b"60\n" + b"a" * 60)
    with pytest.raises(TooLarge):
        decoder.feed(b"41\n")  # 101 bytes in all: refused at the length line
    exact = Decoder(100)
    message = b"a" * 100
    assert b"".join(exact.feed(encode("a", "b", "", message))) == message
    exact.finish()


@pytest.mark.parametrize("text", [b"0", b"1", b"65536", b"999999"])
def test_canonical_lengths(text: bytes) -> None:
    assert canonical_length(text, 10**6, "x") == int(text)


@pytest.mark.parametrize("text", [b"", b"00", b"01", b"1.0", b"1e3", b"0x10", b"\t1", b"1000000"])
def test_non_canonical_lengths(text: bytes) -> None:
    with pytest.raises(WireError):
        canonical_length(text, 10**7, "x")
