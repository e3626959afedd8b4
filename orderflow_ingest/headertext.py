"""Header bytes and encoded words → text that PostgreSQL, JSON, S3 and logs accept.

One decoder for every header text we keep (subject, addresses, Message-ID, attachment names):
raw 8-bit header bytes are UTF-8 when they are valid UTF-8 (SMTPUTF8, RFC 6532), else
windows-1252 (what ERP systems and old Windows mailers send as "Latin-1"). RFC 2047 encoded
words are decoded leniently: an unknown, non-text or escape-producing charset, bad base64 or a
split multi-byte character never raises. Whatever comes out is scrubbed of what a database or a
terminal must never see: lone surrogates and NUL become U+FFFD.

Pure: standard library only. Nothing here raises on any input.
"""

from __future__ import annotations

import binascii
import codecs
import re
from typing import Any

REPLACEMENT = "\ufffd"
# Codecs that turn bytes into arbitrary code points (surrogates, NUL) by escape sequences, or
# that are no character set at all: a charset label naming one is treated as unknown.
# (codecs.lookup normalises the spelling.) Filenames (jobs/filenames.py) refuse the same ones.
NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "undefined", "punycode", "idna"})
_CHARSET_ALIASES = {
    "x-unknown": "",
    "unknown-8bit": "",
    "ks_c_5601-1987": "cp949",
    "x-mac-roman": "mac_roman",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "iso-8859-1": "cp1252",  # WHATWG: senders labelling iso-8859-1 mean windows-1252
    "us-ascii": "",  # 8-bit bytes under an ascii label: read them as undeclared
    "ascii": "",
}
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_SPACE_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")
_UNSAFE_CHARS = re.compile("[\x00\ud800-\udfff]")
_SURROGATE_ESCAPED = re.compile("[\udc80-\udcff]")


def clean(text: str) -> str:
    """`text` without lone surrogates or NUL (PostgreSQL text/jsonb refuses both)."""
    return _UNSAFE_CHARS.sub(REPLACEMENT, text)


def clean_json(value: Any) -> Any:
    """A JSON-ready value (dicts, lists, strings) with every string and key cleaned."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(key)): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def decode_8bit(raw: bytes) -> str:
    """Raw header bytes: UTF-8 when valid, else windows-1252 (its 5 holes become U+FFFD)."""
    try:
        return clean(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return clean(raw.decode("cp1252", "replace"))


def from_parser(value: str) -> str:
    """A header value from the stdlib bytes parser, whose 8-bit bytes are surrogate escapes
    (compat32 `raw_items()`), with those bytes decoded by `decode_8bit`."""
    if not _SURROGATE_ESCAPED.search(value):
        return clean(value)
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte: nothing to recover
        return clean(value)
    return decode_8bit(raw)


def lookup_charset(name: str) -> str | None:
    """Python's codec for a MIME charset label, or None when unknown or no character set."""
    label = name.strip().strip("\"'").lower()
    if "*" in label:  # RFC 2231 §5 language suffix inside an encoded word: utf-8*en
        label = label.split("*", 1)[0]
    label = _CHARSET_ALIASES.get(label, label)
    if not label:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):  # ValueError: a NUL in the label
        return None
    if info.name in NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; unknown charsets or invalid bytes fall back to
    `decode_8bit`, so a mislabelled word still reads right when it is UTF-8 or cp1252."""
    codec = lookup_charset(charset) if charset else None
    if codec is not None:
        try:
            return clean(raw.decode(codec))
        except Exception:  # any codec failure is a content fault: fall back
            pass
    return decode_8bit(raw)


def text_to_bytes(value: str) -> bytes:
    """Parser text back to bytes: 8-bit bytes come back from their surrogate escapes, and a
    surrogate that is no such escape (decoded from `utf-7`, say) becomes `?`: never raises."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def decode_q_word(text: str) -> bytes:
    """The payload of a Q-encoded word (RFC 2047 §4.2) as bytes."""
    return binascii.a2b_qp(text_to_bytes(text.replace("_", " ")))


def decode_b_word(text: str) -> bytes:
    """The payload of a B-encoded word as bytes; stray characters and bad padding tolerated."""
    data = re.sub(r"[^A-Za-z0-9+/]", "", text)
    if len(data) % 4 == 1:
        data = data[:-1]
    data += "=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data.encode("ascii"))
    except binascii.Error:
        return b""


def decode_encoded_words(text: str) -> str:
    """Decode every RFC 2047 encoded word in `text`, wherever it is.

    Adjacent encoded words are joined without the whitespace between them (RFC 2047 §6.2);
    adjacent words in one charset are decoded together, so a multi-byte character split across
    two words (as Outlook does) survives.
    """
    if "=?" not in text:
        return clean(text)
    text = _SPACE_BETWEEN_WORDS.sub(r"\1\2", text)
    out: list[str] = []
    pending = b""
    pending_charset: str | None = None
    position = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(pending, pending_charset))
        pending, pending_charset = b"", None

    for match in _ENCODED_WORD.finditer(text):
        if match.start() > position:
            flush()
            out.append(text[position : match.start()])
        charset, encoding, payload = match.group(1), match.group(2).lower(), match.group(3)
        raw = decode_q_word(payload) if encoding == "q" else decode_b_word(payload)
        if pending and charset.lower() != (pending_charset or "").lower():
            flush()
        pending += raw
        pending_charset = charset
        position = match.end()
    flush()
    out.append(text[position:])
    return clean("".join(out))


def header_text(value: str | None) -> str | None:
    """A header value as the stdlib parser returns it → display text: 8-bit bytes decoded,
    encoded words decoded, folding removed, surrounding space stripped."""
    if value is None:
        return None
    text = decode_encoded_words(from_parser(value))
    return " ".join(text.replace("\r", "").replace("\n", "").split("\t")).strip()
