"""Filenames out of real-world MIME headers, and names safe for a storage key.

Senders get filenames wrong in every way the RFCs allow and several they do not: RFC 2231
continuations with a charset, RFC 2047 encoded words inside quoted parameters (forbidden, and
what most webmail sends), raw UTF-8 or cp1252 bytes, unquoted names with spaces, full Windows
paths. The stdlib parser drops or mangles several of these, and a mangled name is an order the
customer cannot find, so parameters are parsed here. Nothing in this module raises on input:
undecodable bytes become U+FFFD and parsing carries on.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from urllib.parse import unquote_to_bytes

from orderflow_ingest.headertext import NOT_CHARSETS, decode_b_word, decode_q_word, text_to_bytes

# Longest sanitised name, in UTF-8 bytes: S3 keys allow 1024, file systems 255 per component.
MAX_NAME_BYTES = 200

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_SPACE_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")
_CONTINUATION = re.compile(r"^(?P<name>[^*]+)\*(?P<index>[0-9]+)(?P<star>\*?)$")
# RFC 2231 sets no limit; a header block is at most a megabyte, so more digits than this name
# no real segment (and int() refuses over 4,300 digits, which used to fail the whole message).
MAX_CONTINUATION_DIGITS = 6
# Characters a name may not keep: path separators, and what Windows or a shell chokes on.
_UNSAFE = re.compile(r'[/\\:*?"<>|]')
_SPACES = re.compile(r"\s+")


def lookup_charset(name: str) -> str | None:
    """Python's codec name for a MIME charset, or None when unknown."""
    label = name.strip().strip("\"'").lower()
    if "*" in label:  # RFC 2231 §5 language suffix inside an encoded word: utf-8*en
        label = label.split("*", 1)[0]
    aliases = {
        "x-unknown": "",
        "unknown-8bit": "",
        "ks_c_5601-1987": "cp949",
        "x-mac-roman": "mac_roman",
    }
    label = aliases.get(label, label)
    if not label:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):  # ValueError: a NUL in the name
        return None
    # rot13, hex, base64, zlib ... are bytes-to-bytes codecs: `bytes.decode` refuses them.
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_CHARSETS:
        return None
    return info.name


def decode_bytes(raw: bytes, charset: str | None = None) -> tuple[str, bool]:
    """Decode with the declared charset, else UTF-8, else cp1252; returns (text, was_clean).

    cp1252 is the usual culprit for undeclared 8-bit names (Windows mailers); bytes it cannot map
    become U+FFFD rather than an error.
    """
    codec = lookup_charset(charset) if charset else None
    for candidate in (codec, "utf-8"):
        if candidate is not None:
            try:
                return raw.decode(candidate), True
            except Exception:  # any codec's failure means "try the next one"
                pass
    try:
        return raw.decode("cp1252"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


def decode_header_text(value: str) -> str:
    """A header value from the stdlib parser with raw 8-bit bytes decoded (UTF-8, else cp1252)."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    return decode_bytes(text_to_bytes(value))[0]


def decode_rfc2047(text: str) -> str:
    """Decode every encoded word in `text`, wherever it is (also inside quoted parameters).

    Adjacent encoded words are joined without the whitespace between them (RFC 2047 §6.2);
    adjacent words in the same charset are decoded together so a multi-byte character split
    across two words (as Outlook does) survives.
    """
    if "=?" not in text:
        return text
    text = _SPACE_BETWEEN_WORDS.sub(r"\1\2", text)
    out: list[str] = []
    pending: bytes = b""
    pending_charset: str | None = None
    position = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(pending, pending_charset)[0])
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
    return "".join(out)


def decode_rfc2231(value: str) -> str:
    """charset'language'percent-encoded -> text; tolerant of a missing charset or bad escapes."""
    parts = value.split("'", 2)
    if len(parts) == 3:
        charset, _language, encoded = parts
    else:
        charset, encoded = "", value
    raw = unquote_to_bytes(text_to_bytes(encoded))
    return decode_bytes(raw, charset or None)[0]


def _split_params(text: str) -> list[str]:
    """Split at `;` outside quoted strings; an unterminated quote runs to the end."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> tuple[str, bool]:
    """Strip surrounding quotes and backslash escapes; returns (value, was_quoted)."""
    value = value.strip()
    if value.startswith('"'):
        body = value[1:]
        end = body.rfind('"')
        if end != -1:
            trailing = body[end + 1 :].strip()
            body = body[:end] + (" " + trailing if trailing else "")
        return re.sub(r"\\(.)", r"\1", body), True
    return value, False


def parse_header_params(value: str) -> tuple[str, dict[str, str], list[str]]:
    """Parse `token; a=b; c*=utf-8''x; d*0=...` into (token, params, defects).

    Params come back decoded (RFC 2231 joined and decoded, RFC 2047 words decoded), names in
    lower case. An unquoted value keeps everything up to the next `;`, spaces included, so
    `name=Order 42.pdf` is `Order 42.pdf`, not `Order`. The extended (starred) form wins over the
    plain one when both are present (RFC 6266 §4.3).
    """
    defects: list[str] = []
    pieces = _split_params(value)
    token = pieces[0].strip().strip('"').lower()
    plain: dict[str, str] = {}
    extended: dict[str, str] = {}
    continued: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, sep, raw = piece.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            defects.append(f"parameter without value: {piece.strip()[:40]!r}")
            continue
        text, quoted = _unquote(raw)
        if not quoted:
            text = text.strip()
        match = _CONTINUATION.match(name)
        if match and len(match.group("index")) > MAX_CONTINUATION_DIGITS:
            defects.append(f"RFC 2231 continuation index of {len(match.group('index'))} digits")
            continue
        if match:
            segments = continued.setdefault(match.group("name"), {})
            segments.setdefault(int(match.group("index")), (text, bool(match.group("star"))))
        elif name.endswith("*"):
            extended.setdefault(name[:-1], decode_rfc2231(text))
        else:
            plain.setdefault(name, text)
    for name, segments in continued.items():
        if name in extended:
            continue
        extended[name] = _join_continuations(segments, defects)
    params: dict[str, str] = {}
    for name, text in plain.items():
        params[name] = decode_rfc2047(decode_header_text(text))
    params.update(extended)
    return token, params, defects


def _join_continuations(segments: dict[int, tuple[str, bool]], defects: list[str]) -> str:
    """RFC 2231 §3/§4: join name*0, name*1*, ... then decode; starred segments are %-encoded.

    Only the first segment carries charset'language'; encoded segments are joined as bytes
    before decoding so a UTF-8 character split across two segments survives.
    """
    indexes = sorted(segments)
    if indexes != list(range(len(indexes))):
        defects.append("RFC 2231 continuation segments missing or out of order")
    charset: str | None = None
    raw = bytearray()
    for position, index in enumerate(indexes):
        text, encoded = segments[index]
        if encoded:
            if position == 0 and text.count("'") >= 2:
                charset, _language, text = text.split("'", 2)
            raw += unquote_to_bytes(text_to_bytes(text))
        else:
            raw += text_to_bytes(text)
    decoded = decode_bytes(bytes(raw), charset)[0]
    return decode_rfc2047(decoded) if "=?" in decoded else decoded


def sanitise(name: str | None) -> str | None:
    """A name safe for a storage key and a file system, or None when nothing usable is left.

    Keeps the last path component (mailers send C:\\Users\\...\\order.pdf), drops control and
    bidi-override characters (a right-to-left override can make `fdp.exe` read as `exe.pdf`),
    replaces separators and shell-hostile characters with `_`, refuses `.`/`..`, and caps the
    length in UTF-8 bytes while keeping the extension.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = "".join(
        " " if ch in "\t\r\n" else ch
        for ch in name
        if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in "\t\r\n"
    )
    name = re.split(r"[/\\]", name.rstrip("/\\ "))[-1] if re.search(r"[/\\]", name) else name
    name = _UNSAFE.sub("_", name)
    name = _SPACES.sub(" ", name).strip(" .")
    # Removing characters can leave combining marks out of canonical order: normalise again,
    # so that sanitising a sanitised name changes nothing.
    name = unicodedata.normalize(
        "NFC", _cap_length(unicodedata.normalize("NFC", name), MAX_NAME_BYTES)
    )
    # Checked after the cut: a name whose letters all sit past the cap has nothing usable left
    # (the caller then gives the document its fallback name).
    if not any(ch.isalnum() for ch in name):
        return None
    return name


def _cap_length(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 16 or not stem:
        stem, extension = name, ""
    suffix = ("." + extension) if extension else ""
    room = limit - len(suffix.encode("utf-8"))
    encoded = stem.encode("utf-8")[:room]
    return encoded.decode("utf-8", "ignore").rstrip(" .") + suffix


_EXTENSIONS = {
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/msword": "doc",
    "application/vnd.ms-tnef": "dat",
    "application/ms-tnef": "dat",
    "application/xml": "xml",
    "application/json": "json",
    "text/csv": "csv",
    "text/plain": "txt",
    "text/html": "html",
    "text/xml": "xml",
    "text/calendar": "ics",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/tiff": "tif",
    "image/heic": "heic",
    "image/webp": "webp",
    "message/rfc822": "eml",
}


def extension_for(mime_type: str) -> str:
    return _EXTENSIONS.get(mime_type, "bin")


def fallback_name(part_path: str, mime_type: str) -> str:
    """A name for a document that arrived without a usable one: from its part path and type."""
    return f"part-{part_path}.{extension_for(mime_type)}"
