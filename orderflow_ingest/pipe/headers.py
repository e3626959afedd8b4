"""What the delivery service reads from a message's header block: the spec's metadata
(FR-003) and the dedup key. Pure logic; bodies are never parsed here.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from orderflow_ingest import headertext
from orderflow_ingest.auth_verdicts import claims

SYNTHETIC_DOMAIN = "synthetic.orderflow"
# Beyond this a Message-ID is replaced by its hash: the dedup index must stay small, and no
# legitimate mailer writes ids anywhere near this long.
MAX_MESSAGE_ID = 512
MESSAGE_ID = re.compile(r"<[^<>\s]+>")
TRACE_FIELDS = (b"received", b"return-path", b"delivered-to", b"x-original-to")


class MalformedHeaders(Exception):
    """The header block cannot be read as email headers; the raw is kept and marked FAILED."""


@dataclass(frozen=True)
class HeaderFacts:
    message_id: str
    message_id_synthetic: bool
    from_email: str | None
    to_email: str | None
    subject: str | None
    authentication_results: list[str] = field(default_factory=list)


def split_header_block(data: bytes) -> bytes | None:
    """The header block (up to the blank line), or None while no blank line has been seen."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end != -1:
            return data[: end + len(separator)]
    return None


def clean_text(value: str) -> str:
    """Text PostgreSQL accepts: raw 8-bit bytes decoded (UTF-8, else windows-1252), no NUL and
    no lone surrogate (see orderflow_ingest.headertext)."""
    return headertext.from_parser(value)


def decode_text(value: str | None) -> str | None:
    """RFC 2047 decoded text; undecodable pieces are replaced, never fatal."""
    return headertext.header_text(value)


def address_of(value: str | None) -> str | None:
    """The first address in an address header, as plain text (or None)."""
    if not value:
        return None
    from email.utils import getaddresses

    for _name, address in getaddresses([clean_text(value)]):
        if "@" in address:
            return address[:320]
    return None


def normalise_message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = MESSAGE_ID.search(value)
    message_id = clean_text(found.group(0) if found else value.strip())
    if not message_id:
        return None
    if len(message_id) > MAX_MESSAGE_ID:
        digest = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()
        return f"<sha256-{digest}@{SYNTHETIC_DOMAIN}>"
    return message_id


def synthetic_message_id(parts: list[str | None], body_sha256: str = "") -> str:
    """Spec edge case 1: no Message-ID → a stable id from From, To, Subject, Date and a hash
    of the body, so two different orders with the same four headers never share an id."""
    material = "\x00".join([*(part or "" for part in parts), body_sha256])
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()
    return f"<{digest[:40]}@{SYNTHETIC_DOMAIN}>"


def read_header_facts(block: bytes, body_sha256: str = "") -> HeaderFacts:
    """Parse a header block; raises MalformedHeaders if it holds no header at all.

    `body_sha256` (of the body as sent) goes into a synthetic Message-ID.
    """
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    try:
        headers = parser.parsebytes(block)
    except Exception as error:  # the stdlib parser is lenient; anything else is malformed
        raise MalformedHeaders(f"header block unreadable: {type(error).__name__}") from None
    # raw_items: values as parsed, 8-bit bytes as surrogate escapes (compat32's get() would
    # wrap them in an unknown-8bit Header that reads back as U+FFFD).
    fields = [(str(name).lower(), str(value)) for name, value in headers.raw_items()]
    if not fields:
        raise MalformedHeaders("no header fields before the body")

    def raw(name: str) -> str | None:
        return next((value for key, value in fields if key == name), None)

    message_id = normalise_message_id(raw("message-id"))
    synthetic = message_id is None
    if message_id is None:
        message_id = synthetic_message_id(
            [raw("from"), raw("to"), raw("subject"), raw("date")], body_sha256
        )
    return HeaderFacts(
        message_id=message_id,
        message_id_synthetic=synthetic,
        from_email=address_of(raw("from")),
        to_email=address_of(raw("to")),
        subject=decode_text(raw("subject")),
        authentication_results=[
            clean_text(value) for key, value in fields if key == "authentication-results"
        ],
    )


def content_message_id(sha256_hex: str) -> str:
    """For a message whose headers cannot be read: dedup on the exact bytes instead."""
    return f"<raw-{sha256_hex[:40]}@{SYNTHETIC_DOMAIN}>"


def _fields(block: bytes) -> Iterator[bytes]:
    """The header fields of a block (LF line ends), each with its continuation lines."""
    current = b""
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and current:
            current += b"\n" + line
            continue
        if current:
            yield current
        current = line
    if current:
        yield current


def is_our_trace_field(header: bytes, authserv_id: str) -> bool:
    """A header our own hosts add on the way in, which a retry through another of our MX
    hosts carries differently: any Received (trace, never content: a sender's retry may also
    leave through another of its own relays), the pipe's Return-Path / Delivered-To /
    X-Original-To, and Authentication-Results with our authserv-id."""
    name, colon, value = header.partition(b":")
    if not colon:
        return False
    name = name.strip().lower()
    if name in TRACE_FIELDS:
        return True
    if name == b"authentication-results":
        return claims(value.decode("utf-8", "replace"), authserv_id)
    return False


def content_header_digest(block: bytes, authserv_id: str) -> bytes:
    """sha256 of the header block as the sender sent it: our trace fields left out, line
    ends LF. With the body's digest this is the dedup gate's notion of "same content"."""
    digest = hashlib.sha256()
    for header in _fields(block):
        if not is_our_trace_field(header, authserv_id):
            digest.update(header + b"\n")
    return digest.digest()
