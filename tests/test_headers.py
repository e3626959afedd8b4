"""Header facts and the dedup key (spec FR-003, FR-008, edge case "no Message-ID")."""

import pytest

from orderflow_ingest.pipe.headers import (
    MalformedHeaders,
    content_message_id,
    normalise_message_id,
    read_header_facts,
    split_header_block,
    synthetic_message_id,
)

BLOCK = (
    b"From: Buyer <Buyer@Customer.example>\r\n"
    b"To: orders+acme@orderflow.example.com\r\n"
    b"Subject: =?UTF-8?B?QmVzdGVsbHVuZyDDhA==?=\r\n"
    b"Date: Sat, 21 Nov 2026 10:14:00 +0000\r\n"
    b"Message-ID:  <po-1@customer.example> (comment)\r\n\r\n"
)


def test_reads_the_spec_metadata() -> None:
    facts = read_header_facts(BLOCK)
    assert facts.message_id == "<po-1@customer.example>"
    assert not facts.message_id_synthetic
    assert facts.from_email == "Buyer@Customer.example"
    assert facts.to_email == "orders+acme@orderflow.example.com"
    assert facts.subject == "Bestellung Ä"  # RFC 2047 decoded


def test_missing_message_id_gets_a_stable_synthetic_one() -> None:
    block = BLOCK.replace(b"Message-ID:  <po-1@customer.example> (comment)\r\n", b"")
    first, second = read_header_facts(block), read_header_facts(block)
    assert first.message_id_synthetic
    assert first.message_id == second.message_id
    assert first.message_id.endswith("@synthetic.orderflow>")
    other = read_header_facts(
        block.replace(b"Subject: =?UTF-8?B?QmVzdGVsbHVuZyDDhA==?=", b"Subject: x")
    )
    assert other.message_id != first.message_id


def test_synthetic_id_depends_on_from_to_subject_date_only() -> None:
    assert synthetic_message_id(["a", "b", "c", "d"]) != synthetic_message_id(["a", "b", "c", "e"])
    assert synthetic_message_id(["ab", "c", None, None]) != synthetic_message_id(
        ["a", "bc", None, None]
    )


def test_eight_bit_garbage_and_nul_are_made_storable() -> None:
    facts = read_header_facts(b"Subject: caf\xe9 \x00 order\r\nFrom: x@y.example\r\n\r\n")
    assert facts.subject is not None
    assert "\x00" not in facts.subject
    facts.subject.encode("utf-8")  # would raise on a lone surrogate


def test_overlong_message_id_is_hashed() -> None:
    long_id = "<" + "x" * 2000 + "@example>"
    normalised = normalise_message_id(long_id)
    assert normalised is not None and len(normalised) < 200
    assert normalised == normalise_message_id(long_id)


def test_header_block_boundaries() -> None:
    assert split_header_block(b"A: b\r\n\r\nbody") == b"A: b\r\n\r\n"
    assert split_header_block(b"A: b\n\nbody") == b"A: b\n\n"
    assert split_header_block(b"A: b\r\nB: c") is None


def test_no_header_at_all_is_malformed() -> None:
    with pytest.raises(MalformedHeaders):
        read_header_facts(b"\r\n")
    assert content_message_id("ab" * 32) != content_message_id("cd" * 32)
