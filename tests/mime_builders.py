"""Builders for the MIME tests: hand-written raw messages and a minimal TNEF (winmail.dat) writer.

Raw messages are written out byte by byte on purpose: the cases that lose orders (RFC 2231
continuations, encoded words inside quotes, bad base64, unknown encodings) are exactly the
ones the stdlib `email` package will not produce.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from typing import Any

from orderflow_ingest.jobs.extract import extract_message

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(100)) + b"\xff\xd9"
CSV_BYTES = b"sku;qty;price\nA-1;2;3.50\nB-7;10;1.25\n"
ZIP = (
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00"
    + b"order.txt"
    + bytes(range(50))
    + b"PK\x05\x06"
    + bytes(18)
)
XLSX = (
    b"PK\x03\x04\x14\x00\x06\x00\x08\x00[Content_Types].xml"
    + bytes(40)
    + b"PK\x03\x04\x14\x00\x06\x00\x08\x00xl/workbook.xml"
    + bytes(40)
)
XLS = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes, width: int = 76) -> str:
    encoded = base64.b64encode(data).decode()
    return "\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))


def message(*lines: str, crlf: bool = False) -> bytes:
    text = "\n".join(lines) + "\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    return text.encode("utf-8", "surrogateescape")


HEAD = ("From: buyer@customer.example", "To: orders+acme@orderflow.test", "Subject: PO 4711")


def inspect_bytes(raw: bytes, **options: Any) -> dict[str, Any]:
    with extract_message(io.BytesIO(raw), **options) as extraction:
        return extraction.as_json()


def by_part(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every decision keyed by part path: documents and skipped parts alike."""
    parts: dict[str, dict[str, Any]] = {}
    for document in result["documents"]:
        parts[document["part"]] = {"decision": "document", **document}
    for skipped in result["skipped"]:
        parts[skipped["part"]] = dict(skipped)
    return parts


# --- TNEF -------------------------------------------------------------------------------------

TNEF_SIGNATURE = 0x223E9F78
LVL_MESSAGE = 1
LVL_ATTACHMENT = 2


def _attribute(level: int, name: int, kind: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", checksum)


def _mapi_unicode(prop_id: int, text: str) -> bytes:
    raw = (text + "\x00").encode("utf-16-le")
    padded = raw + b"\x00" * (-len(raw) % 4)
    return struct.pack("<HHII", 0x001F, prop_id, 1, len(raw)) + padded


def tnef_blob(files: list[tuple[str, bytes]], long_names: bool = True) -> bytes:
    """A winmail.dat with these files, as Outlook writes it (title, data, MAPI long name)."""
    out = struct.pack("<IH", TNEF_SIGNATURE, 0x0001)
    out += _attribute(LVL_MESSAGE, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += _attribute(LVL_MESSAGE, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    for name, data in files:
        short = name.encode("cp1252", "replace")[:12] + b"\x00"
        out += _attribute(LVL_ATTACHMENT, 0x9002, 0x0006, bytes(14))
        out += _attribute(LVL_ATTACHMENT, 0x8010, 0x0001, short)
        out += _attribute(LVL_ATTACHMENT, 0x800F, 0x0006, data)
        if long_names:
            props = struct.pack("<I", 1) + _mapi_unicode(0x3707, name)
            out += _attribute(LVL_ATTACHMENT, 0x9005, 0x0006, props)
    return out
