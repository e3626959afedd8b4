"""Chunked transfer decoders (jobs/decoders.py): same bytes whatever the chunking, never raise."""

from __future__ import annotations

import base64
import binascii
import os
import quopri

import pytest

from orderflow_ingest.jobs.decoders import (
    Base64Decoder,
    Decoder,
    QuotedPrintableDecoder,
    UudecodeDecoder,
    make_decoder,
    normalise_encoding,
)


def run(decoder: Decoder, data: bytes, chunk: int) -> bytes:
    out = bytearray()
    for start in range(0, len(data), chunk):
        out += decoder.feed(data[start : start + chunk])
    out += decoder.finish()
    return bytes(out)


PAYLOAD = os.urandom(5000) + b"=\n==" + bytes(range(256))


@pytest.mark.parametrize("chunk", [1, 3, 7, 76, 77, 4096, 1 << 20])
def test_base64_any_chunking(chunk: int) -> None:
    encoded = base64.encodebytes(PAYLOAD)
    decoder = Base64Decoder()
    assert run(decoder, encoded, chunk) == PAYLOAD
    assert not decoder.defects and not decoder.corrupt


def test_base64_missing_padding() -> None:
    decoder = Base64Decoder()
    assert run(decoder, b"aGVsbG8", 2) == b"hello"
    assert decoder.defects and not decoder.corrupt


def test_base64_stray_characters_are_ignored() -> None:
    encoded = base64.encodebytes(PAYLOAD).replace(b"\n", b"*\n", 3)
    decoder = Base64Decoder()
    assert run(decoder, encoded, 100) == PAYLOAD
    assert any("outside the alphabet" in d for d in decoder.defects)
    assert not decoder.corrupt


def test_base64_concatenated_padded_blocks() -> None:
    assert run(Base64Decoder(), b"QQ==\nQg==\nQ0Q=\n", 5) == b"ABCD"


def test_base64_garbage_is_corrupt() -> None:
    decoder = Base64Decoder()
    run(decoder, b"this is !!! not ### base64 at all ~~~ " * 20, 64)
    assert decoder.corrupt


@pytest.mark.parametrize("chunk", [1, 2, 5, 64, 1 << 16])
def test_quoted_printable_any_chunking(chunk: int) -> None:
    text = ("Grüße, Bestellung über 100 € — " * 40 + "\n") * 5
    encoded = quopri.encodestring(text.encode())
    assert run(QuotedPrintableDecoder(), encoded, chunk) == quopri.decodestring(encoded)


def test_quoted_printable_space_after_soft_break() -> None:
    assert run(QuotedPrintableDecoder(), b"abc= \ndef=41\n", 3) == b"abcdefA\n"


def test_quoted_printable_long_line_without_newline_is_bounded() -> None:
    encoded = b"=41" * 100_000
    assert run(QuotedPrintableDecoder(), encoded, 1000) == b"A" * 100_000


def uuencode(data: bytes, name: str = "order.pdf") -> bytes:
    lines = [f"begin 644 {name}\n".encode()]
    for start in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[start : start + 45]))
    lines.append(b"`\nend\n")
    return b"".join(lines)


@pytest.mark.parametrize("chunk", [1, 13, 61, 4096])
def test_uudecode(chunk: int) -> None:
    decoder = UudecodeDecoder()
    assert run(decoder, uuencode(PAYLOAD), chunk) == PAYLOAD
    assert decoder.begin_name == "order.pdf"
    assert not decoder.defects


def test_uudecode_without_begin_stores_as_is() -> None:
    decoder = UudecodeDecoder()
    assert run(decoder, b"just text\nmore\n", 4) == b"just text\nmore\n"
    assert decoder.defects


def test_uudecode_bad_line_length_is_repaired() -> None:
    good = binascii.b2a_uu(b"hello world").rstrip(b"\n")
    assert run(UudecodeDecoder(), b"begin 644 x\n" + good + b"garbage\nend\n", 7) == b"hello world"


def test_unknown_encoding_stores_bytes_as_is() -> None:
    decoder, defect = make_decoder("x-gzip64")
    assert defect and "x-gzip64" in defect
    assert run(decoder, b"raw bytes", 2) == b"raw bytes"


@pytest.mark.parametrize(
    ("value", "normal"),
    [(" Base64 ", "base64"), ('"quoted-printable"', "quoted-printable"), ("7bit; x", "7bit")],
)
def test_normalise_encoding(value: str, normal: str) -> None:
    assert normalise_encoding(value) == normal
