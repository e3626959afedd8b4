"""What the delivery service reads from a message's header block: the spec's metadata
(FR-003) and the dedup key. Pure logic; bodies are never parsed here.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header

SYNTHETIC_DOMAIN = "synthetic.orderflow"
# Beyond this a Message-ID is replaced by its hash: the dedup index must stay small, and no
# legitimate mailer writes ids anywhere near this long.
MAX_MESSAGE_ID = 512
MESSAGE_ID = re.compile(r"<[^<>\s]+>")


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
    """Text PostgreSQL accepts: raw 8-bit bytes read as UTF-8 (or replaced), no NUL."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value.replace("\x00", "\ufffd")


def decode_text(value: str | None) -> str | None:
    """RFC 2047 decoded text; undecodable pieces are replaced, never fatal."""
    if value is None:
        return None
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        decoded = value
    return clean_text(decoded).strip()


def address_of(value: str | None) -> str | None:
    """The first address in an address header, as plain text (or None)."""
    if not value:
        return None
    from email.utils import getaddresses

    for _name, address in getaddresses([value]):
        if "@" in address:
            return clean_text(address)[:320]
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


def synthetic_message_id(parts: list[str | None]) -> str:
    """Spec edge case 1: no Message-ID → a stable id from From, To, Subject and Date."""
    material = "\x00".join(part or "" for part in parts)
    digest = hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()
    return f"<{digest[:40]}@{SYNTHETIC_DOMAIN}>"


def read_header_facts(block: bytes) -> HeaderFacts:
    """Parse a header block; raises MalformedHeaders if it holds no header at all."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    try:
        headers = parser.parsebytes(block)
    except Exception as error:  # the stdlib parser is lenient; anything else is malformed
        raise MalformedHeaders(f"header block unreadable: {type(error).__name__}") from None
    if not headers.keys():
        raise MalformedHeaders("no header fields before the body")

    def raw(name: str) -> str | None:
        value = headers.get(name)
        return None if value is None else str(value)

    message_id = normalise_message_id(raw("Message-ID"))
    synthetic = message_id is None
    if message_id is None:
        message_id = synthetic_message_id([raw("From"), raw("To"), raw("Subject"), raw("Date")])
    return HeaderFacts(
        message_id=message_id,
        message_id_synthetic=synthetic,
        from_email=address_of(raw("From")),
        to_email=address_of(raw("To")),
        subject=decode_text(raw("Subject")),
        authentication_results=[
            str(value) for value in headers.get_all("Authentication-Results") or []
        ],
    )


def content_message_id(sha256_hex: str) -> str:
    """For a message whose headers cannot be read: dedup on the exact bytes instead."""
    return f"<raw-{sha256_hex[:40]}@{SYNTHETIC_DOMAIN}>"
