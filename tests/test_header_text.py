"""Header text, the dedup gate's content hash and the total fact guard (issue 10, items 2, 3
and 5's raw 8-bit headers). Pure logic: no stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orderflow_ingest import headertext
from orderflow_ingest.pipe import headers, ingest
from orderflow_ingest.settings import Settings, load_settings

AUTHSERV = "mx.orderflow.example"
UMLAUT_SUBJECT = "Bestellung Größe"

# Encoded words and raw bytes that broke the delivery path or a storage layer: lone
# surrogates (utf-7, unicode_escape), NUL, bad base64, non-text codecs, unknown charsets.
POISON_SUBJECTS = [
    b"=?utf-7?q?+2AA-?=",
    b"=?utf-7?b?KzJBQS0=?=",
    b"=?unicode_escape?q?=5Cud800?=",
    b"=?raw_unicode_escape?q?=5Cudfff?=",
    b"=?unicode-escape?q?=5Cx00?=",
    b"=?utf-8?q?a=00b?=",
    b"=?utf-8?b?abc?=",
    b"=?utf-8?b?!!!?=",
    b"=?rot13?q?abc?=",
    b"=?zlib?q?x?=",
    b"=?hex?q?zz?=",
    b"=?no-such-charset?q?x?=",
    b"=?utf-16?b?2AA=?=",
    b"=?\x00?q?x?=",
    b"caf\xe9 \x00 \xed\xa0\x80 order",  # cp1252, NUL, a UTF-8-encoded surrogate
]


def settings(tmp_path: Path) -> Settings:
    env = tmp_path / "ingest.env"
    env.write_text(
        "ORDERFLOW_DATABASE_URL=postgresql://app@127.0.0.1/db\n"
        "ORDERFLOW_REDIS_URL=redis://127.0.0.1:1/0\n"
        "ORDERFLOW_S3_BUCKET=orders-raw\n"
        "ORDERFLOW_INGEST_DOMAINS=orderflow.example\n"
        f"ORDERFLOW_AUTHSERV_ID={AUTHSERV}\n"
        f"ORDERFLOW_SPOOL_DIR={tmp_path}\n"
    )
    return load_settings(str(env), environ={})


_OPEN: list[ingest.SpooledMessage] = []


@pytest.fixture(autouse=True)
def _close_spooled() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().file.close()


def spooled(raw: bytes, tmp_path: Path, chunk: int = 7) -> ingest.SpooledMessage:
    """`raw` through the delivery service's spooler, in chunks of `chunk` bytes."""
    pieces = [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
    message = ingest.spool(iter(pieces), settings(tmp_path))
    _OPEN.append(message)
    return message


def storable(text: str | None) -> None:
    """What PostgreSQL text/jsonb accepts: encodable as UTF-8, no NUL."""
    assert text is not None
    text.encode("utf-8")
    assert "\x00" not in text


# --- Item 5: one header-text decoder -----------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "latin-1"])
def test_item5_8bit_header_bytes_decode_as_utf8_else_windows_1252(encoding: str) -> None:
    raw = UMLAUT_SUBJECT.encode(encoding)
    assert headertext.decode_8bit(raw) == UMLAUT_SUBJECT
    # The stdlib bytes parser hands 8-bit bytes over as surrogate escapes.
    assert headertext.from_parser(raw.decode("ascii", "surrogateescape")) == UMLAUT_SUBJECT


def test_item5_windows_1252_letters_beyond_latin_1() -> None:
    assert headertext.decode_8bit(b"\x80 5 \x84Preis\x93") == "€ 5 „Preis“"
    assert headertext.decode_8bit(b"a\x81b") == "a\ufffdb"  # a hole in windows-1252


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_item5_8bit_subject_and_from_in_header_facts(encoding: str) -> None:
    block = (
        f"From: Jürgen Größe <jürgen@bäckerei.example>\r\n"
        f"Subject: {UMLAUT_SUBJECT}\r\nMessage-ID: <a@b.example>\r\n\r\n"
    ).encode(encoding)
    facts = headers.read_header_facts(block)
    assert facts.subject == UMLAUT_SUBJECT
    assert facts.from_email == "jürgen@bäckerei.example"


def test_item5_encoded_words_split_mid_character_and_mixed_with_raw_bytes() -> None:
    value = "=?utf-8?q?Gr=C3=B6=C3?= =?utf-8?q?=9Fe?= f\udcfcr"  # raw cp1252 ü after the words
    assert headertext.header_text(value) == "Größe für"
    assert headertext.header_text("=?iso-8859-1?q?Gr=F6=DFe?=") == "Größe"


# --- Item 3: nothing in a header raises or reaches storage unclean -----------------------


@pytest.mark.parametrize("subject", POISON_SUBJECTS, ids=range(len(POISON_SUBJECTS)))
def test_item3_poison_header_text_never_raises_and_is_storable(subject: bytes) -> None:
    block = b"From: x@customer.example\r\nSubject: " + subject + b"\r\n\r\n"
    facts = headers.read_header_facts(block)
    storable(facts.subject)
    storable(facts.message_id)
    storable(headertext.header_text(subject.decode("ascii", "surrogateescape")))


def test_item3_clean_json_scrubs_keys_and_values() -> None:
    cleaned = headertext.clean_json({"a\ud800": ["x\x00", {"k": "\udcff"}], "n": 1})
    assert cleaned == {"a\ufffd": ["x\ufffd", {"k": "\ufffd"}], "n": 1}


def test_item3_any_exception_reading_facts_is_a_content_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard is total: a fault no one foresaw in the fact readers is content, not 75."""
    message = spooled(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", tmp_path)

    def explode(*args: object) -> None:
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr(headers, "read_header_facts", explode)
    content = ingest.read_facts(message, settings(tmp_path))
    assert content.malformed == "header facts unreadable: RuntimeError"
    assert content.facts.message_id == headers.content_message_id(message.sha256)
    assert content.content_sha256 == message.sha256


def test_item3_unparseable_authentication_results_of_ours_is_no_fault(tmp_path: Path) -> None:
    raw = (
        f"Authentication-Results: {AUTHSERV}; dkim=\x00((((\r\n"
        "Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n"
    ).encode()
    content = ingest.read_facts(spooled(raw, tmp_path), settings(tmp_path))
    assert content.malformed is None
    assert content.auth_results is not None


# --- Item 2: the content hash of the message as sent -------------------------------------

SENT = (
    b"From: buyer@customer.example\r\nTo: orders+acme@orderflow.example\r\n"
    b"Subject: PO 4711\r\nMessage-ID: <po-4711@customer.example>\r\n"
    b"Authentication-Results: other.example; spf=pass\r\n\r\n"
    b"Please deliver 10 pallets.\r\n"
)


def arrived(via: str, queue_id: str, sent: bytes = SENT, line_end: bytes = b"\n") -> bytes:
    """`sent` as our Postfix hands it to the pipe: LF line ends, Return-Path (pipe flag R),
    our Received line, our milter's Authentication-Results."""
    trace = (
        b"Return-Path: <buyer@customer.example>\r\n"
        b"Received: from mail.customer.example (mail.customer.example [192.0.2.1])\r\n"
        b"\tby " + via.encode() + b" (Postfix) with ESMTPS id " + queue_id.encode() + b"\r\n"
        b"\tfor <orders+acme@orderflow.example>; Sun, 29 Nov 2026 18:00:00 +0000 (UTC)\r\n"
        b"Authentication-Results: " + AUTHSERV.encode() + b";\r\n\tspf=pass smtp.mailfrom=x\r\n"
    )
    return (trace + sent).replace(b"\r\n", line_end)


def content_of(raw: bytes, tmp_path: Path, chunk: int = 7) -> str:
    content = ingest.read_facts(spooled(raw, tmp_path, chunk), settings(tmp_path))
    assert content.malformed is None
    return content.content_sha256


def test_item2_retry_via_second_mx_hashes_as_the_same_content(tmp_path: Path) -> None:
    first = content_of(arrived("mx1.orderflow.example", "4QX1"), tmp_path)
    assert content_of(arrived("mx2.orderflow.example", "9ZZ7"), tmp_path, chunk=3) == first
    assert content_of(arrived("mx2.orderflow.example", "9Z", line_end=b"\r\n"), tmp_path) == first
    assert content_of(SENT, tmp_path, chunk=64) == first


@pytest.mark.parametrize(
    "change",
    [
        (b"10 pallets", b"11 pallets"),
        (b"Subject: PO 4711", b"Subject: PO 4712"),
        (b"other.example; spf=pass", b"other.example; spf=fail"),  # not our A-R: content
        (b"Please", b"please"),
    ],
)
def test_item2_same_message_id_other_content_hashes_differently(
    tmp_path: Path, change: tuple[bytes, bytes]
) -> None:
    other = SENT.replace(*change)
    assert content_of(arrived("mx1", "A"), tmp_path) != content_of(
        arrived("mx1", "A", other), tmp_path
    )


def test_item2_synthetic_ids_include_body() -> None:
    block = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: PO\r\nDate: today\r\n\r\n"
    first = headers.read_header_facts(block, "aa" * 32)
    assert first.message_id_synthetic
    assert headers.read_header_facts(block, "aa" * 32).message_id == first.message_id
    assert headers.read_header_facts(block, "bb" * 32).message_id != first.message_id


def test_item2_spooled_body_hash_ignores_chunking_and_line_ends(tmp_path: Path) -> None:
    raw = b"Subject: x\r\n\r\nline one\r\nline two\r\n" + b"\r\n" * 5
    hashes = {spooled(raw, tmp_path, size).body_sha256 for size in (1, 2, 3, 5, 13, 4096)}
    hashes.add(spooled(raw.replace(b"\r\n", b"\n"), tmp_path, 4).body_sha256)
    assert len(hashes) == 1
