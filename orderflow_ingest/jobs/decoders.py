"""Content-Transfer-Encoding decoders that work on chunks, so no part is ever held whole.

Each decoder takes encoded bytes in arbitrary chunks (`feed`) and returns decoded bytes as soon
as they are unambiguous; `finish` flushes the rest. They never raise on content: what they had
to repair or skip goes into `defects`, and `corrupt` says when the damage is too large for the
result to be trusted (the part is still stored, but recorded as FAILED).
"""

from __future__ import annotations

import binascii
import re

_WHITESPACE = b" \t\r\n\x0b\x0c"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_INVALID = bytes(byte for byte in range(256) if byte not in _B64_ALPHABET)
_QP_SPACE_AFTER_SOFT_BREAK = re.compile(rb"=[ \t]+(\r?\n)")
# Longest run of bytes without a line break a line-based decoder holds before giving up on it.
MAX_CARRY = 64 * 1024


class Decoder:
    """Identity: 7bit, 8bit, binary, and unknown encodings (stored as they are)."""

    name = "identity"

    def __init__(self) -> None:
        self.defects: list[str] = []
        self.corrupt = False

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class Base64Decoder(Decoder):
    """Base64 that survives bad padding, stray characters and padding in mid-stream.

    Characters outside the alphabet are dropped and counted; `=` ends a quantum wherever it
    appears (concatenated base64 blocks decode as each block); a final quantum with missing
    padding is completed; a single dangling character is dropped.
    """

    name = "base64"
    # More than this share of characters outside the alphabet means the part is not base64.
    CORRUPT_SHARE = 0.01

    def __init__(self) -> None:
        super().__init__()
        self._carry = b""
        self._invalid = 0
        self._seen = 0
        self._dropped = 0

    def feed(self, data: bytes) -> bytes:
        compact = data.translate(None, _WHITESPACE)
        valid = compact.translate(None, _B64_INVALID)
        self._seen += len(compact)
        self._invalid += len(compact) - len(valid)
        text = self._carry + valid if self._carry else valid
        if b"=" not in text:
            usable = len(text) - len(text) % 4
            self._carry = text[usable:]
            return binascii.a2b_base64(text[:usable]) if usable else b""
        out = bytearray()
        while True:
            index = text.find(b"=")
            if index == -1:
                break
            out += self._decode_final(text[:index])
            end = index
            while end < len(text) and text[end] == 0x3D:
                end += 1
            text = text[end:]
        usable = len(text) - len(text) % 4
        if usable:
            out += binascii.a2b_base64(text[:usable])
        self._carry = text[usable:]
        return bytes(out)

    def _decode_final(self, text: bytes) -> bytes:
        """Decode a run that ends a quantum: pad a short tail, drop a lone leftover character."""
        rest = len(text) % 4
        if rest == 1:
            self._dropped += 1
            text = text[:-1]
        elif rest:
            text += b"=" * (4 - rest)
        return binascii.a2b_base64(text) if text else b""

    def finish(self) -> bytes:
        tail, self._carry = self._carry, b""
        if len(tail) % 4 in (2, 3):
            self.defects.append("base64 padding missing at the end")
        out = self._decode_final(tail)
        if self._dropped:
            self.defects.append(f"base64: {self._dropped} dangling character(s) dropped")
        if self._invalid:
            self.defects.append(
                f"base64: {self._invalid} character(s) outside the alphabet ignored"
            )
            if self._invalid > max(16, self._seen * self.CORRUPT_SHARE):
                self.corrupt = True
        if self._dropped > 1:
            self.corrupt = True
        return out


class QuotedPrintableDecoder(Decoder):
    """Quoted-printable, decoded a whole line at a time so no `=XX` escape is split."""

    name = "quoted-printable"

    def __init__(self) -> None:
        super().__init__()
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        text = self._carry + data if self._carry else data
        cut = text.rfind(b"\n") + 1
        if cut == 0:
            if len(text) <= MAX_CARRY:
                self._carry = text
                return b""
            equals = text.rfind(b"=", len(text) - 3)
            cut = equals if equals != -1 else len(text)
        self._carry = text[cut:]
        return self._decode(text[:cut])

    @staticmethod
    def _decode(text: bytes) -> bytes:
        if b"= " in text or b"=\t" in text:
            text = _QP_SPACE_AFTER_SOFT_BREAK.sub(rb"=\1", text)
        return binascii.a2b_qp(text)

    def finish(self) -> bytes:
        tail, self._carry = self._carry, b""
        return self._decode(tail) if tail else b""


class UudecodeDecoder(Decoder):
    """x-uuencode: `begin MODE NAME`, encoded lines, `end`. Also reports the name it carries.

    Without a `begin` line the bytes are stored as they are (what the stdlib does too).
    """

    name = "x-uuencode"

    def __init__(self) -> None:
        super().__init__()
        self._carry = b""
        self._state = "before"  # before -> body -> after; or raw when there is no begin line
        self._held = bytearray()
        self.begin_name: str | None = None
        self._bad_lines = 0
        self._short_lines = 0

    def feed(self, data: bytes) -> bytes:
        if self._state == "raw":
            return data
        text = self._carry + data if self._carry else data
        cut = text.rfind(b"\n") + 1
        if cut == 0 and len(text) > MAX_CARRY:
            cut = len(text)
        self._carry = text[cut:]
        return self._lines(text[:cut])

    def _lines(self, block: bytes) -> bytes:
        out = bytearray()
        for line in block.splitlines(keepends=True):
            if self._state == "raw":
                out += line
            elif self._state == "before":
                stripped = line.strip()
                if stripped.startswith(b"begin ") and len(stripped.split(None, 2)) == 3:
                    name = stripped.split(None, 2)[2]
                    self.begin_name = name.decode("utf-8", "replace")
                    self._state = "body"
                    self._held.clear()
                else:
                    self._held += line
                    if len(self._held) > MAX_CARRY:
                        out += self._give_up()
            elif self._state == "body":
                out += self._decode_line(line.rstrip(b"\r\n"))
        return bytes(out)

    def _give_up(self) -> bytes:
        self.defects.append("x-uuencode without a begin line; stored as it is")
        self._state = "raw"
        held = bytes(self._held)
        self._held.clear()
        return held

    def _decode_line(self, line: bytes) -> bytes:
        if line.strip() == b"end":
            self._state = "after"
            return b""
        if not line.strip():
            return b""
        count = (line[0] - 32) & 63
        if count == 0:
            return b""
        # binascii pads a short line with NULs up to its declared count, so `M` alone would
        # become 45 bytes: a message of such lines a document ~22x its size. Decode only what
        # the line carries; a short line is a defect (characters lost in transit).
        carried = (len(line) - 1) * 3 // 4
        if count > carried:
            self._short_lines += 1
            count = carried
            if count == 0:
                return b""
            line = bytes([32 + count]) + line[1:]
        try:
            return binascii.a2b_uu(line)
        except binascii.Error:
            # Broken encoders pad badly: decode only the characters the count asks for.
            needed = (count * 4 + 5) // 3
            try:
                return binascii.a2b_uu(line[:needed])
            except binascii.Error:
                self._bad_lines += 1
                return b""

    def finish(self) -> bytes:
        tail, self._carry = self._carry, b""
        out = self._lines(tail) if tail else b""
        if self._state == "before":
            out += self._give_up()
        elif self._state == "body":
            self.defects.append("x-uuencode: no end line")
        if self._bad_lines:
            self.defects.append(f"x-uuencode: {self._bad_lines} undecodable line(s) skipped")
            self.corrupt = True
        if self._short_lines:
            self.defects.append(f"x-uuencode: {self._short_lines} line(s) shorter than declared")
        return out


IDENTITY_ENCODINGS = {"7bit", "8bit", "binary", "7-bit", "8-bit", ""}
UUENCODE_NAMES = {"x-uuencode", "uuencode", "x-uue", "uue"}


def normalise_encoding(value: str | None) -> str:
    """`Base64 ` / `base64; x` / `"base64"` -> `base64`."""
    if not value:
        return ""
    return re.split(r"[;\s]", value.strip().strip('"').lower(), maxsplit=1)[0]


def make_decoder(encoding: str) -> tuple[Decoder, str | None]:
    """The decoder for a normalised transfer encoding, and a defect when it is unknown."""
    if encoding == "base64":
        return Base64Decoder(), None
    if encoding == "quoted-printable":
        return QuotedPrintableDecoder(), None
    if encoding in UUENCODE_NAMES:
        return UudecodeDecoder(), None
    if encoding in IDENTITY_ENCODINGS:
        return Decoder(), None
    return Decoder(), f"unknown transfer encoding {encoding[:40]!r}; bytes stored as they are"
