"""The local wire format between the per-message `deliver` client and the delivery service.

Version OFI2. The client (pipe/deliver.c, which writes this format in C) sends:

    <n>\\n                      envelope length, then n bytes of envelope:
    OFI2 NUL sender NUL recipient NUL queue-id
                                (argv strings cannot hold a NUL, so no escaping is needed)
    <len>\\n<len bytes>         the message, in chunks of 1..CHUNK bytes, repeated
    0 <sha256> <total>\\n        the trailer: lower-case hex sha256 and byte count of the message
    (shutdown of its sending side)

and the service answers one line: ``<exit status> <short text>``.

Why chunks and a trailer (issue 10, item 1): OFI1 ended the message at end-of-stream, so a
client killed mid-message, or one whose deadline fired while its connection waited in the
service's accept backlog, looked like a complete, shorter message; it was stored, and Postfix's
full retry was then dropped as a duplicate. Now every message byte sits inside a counted chunk,
so no content, not even a line that looks like a trailer, is ever read as framing: the only
line that starts with ``0`` is the trailer, and a chunk is never empty. The client sends the
trailer only after a clean end of its standard input. The service stores a message only when
the trailer came, its count and hash match what arrived, and nothing follows it; anything
else (no trailer, wrong count, wrong hash, garbage, a deadline) answers 75 and stores nothing,
and Postfix retries the whole message later.

Lengths are canonical decimal: ASCII digits only, no sign, no spaces, no leading zero (except
"0" itself), at most a few digits. The message is capped at Postfix's message_size_limit plus
MESSAGE_MARGIN (pipe(8) adds Return-Path and turns CRLF into LF, so a message Postfix accepted
is never larger than that): anything larger cannot have come from Postfix, and is answered 75
and logged rather than 67/bounced, because the sender of an unexpected message is no one we can
tell anything to; it stays in Postfix's queue where an operator sees it.

`Decoder` is sans-I/O (bytes in, message pieces out) so the fuzzer and the tests drive the same
parser the service runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

VERSION = "OFI2"
MAX_ENVELOPE = 64 * 1024
CHUNK = 64 * 1024
# Room for what pipe(8) adds to a message Postfix accepted (Return-Path and the like).
MESSAGE_MARGIN = 1024 * 1024
# Longest framing line: "0 " + 64 hex + " " + 20 digits + "\n" is 88 bytes.
MAX_LINE = 96

_LENGTH = re.compile(rb"0|[1-9][0-9]{0,5}")  # envelope and chunk lengths: at most 6 digits
_TRAILER = re.compile(rb"0 ([0-9a-f]{64}) (0|[1-9][0-9]{0,19})")


class WireError(ValueError):
    """What arrived is not one complete, verified message; the text is for our log only."""


class TooLarge(WireError):
    """The message is larger than any message Postfix can have accepted."""


@dataclass(frozen=True)
class WireEnvelope:
    sender: str
    recipient: str
    queue_id: str


def canonical_length(text: bytes, limit: int, what: str) -> int:
    """A length as the client writes it: plain decimal, at most `limit`."""
    if _LENGTH.fullmatch(text) is None:
        raise WireError(f"{what}: not a canonical decimal length")
    value = int(text)
    if value > limit:
        raise WireError(f"{what}: {value} is more than {limit}")
    return value


class Decoder:
    """Feed it the bytes of one connection; it returns message pieces as they complete.

    `envelope` is set once the envelope is in; `complete` once the trailer has arrived and
    verified. Any framing fault raises WireError and the decoder must not be fed again.
    """

    def __init__(self, max_message: int):
        self.max_message = max_message
        self.envelope: WireEnvelope | None = None
        self.complete = False
        self.total = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._chunk_left = 0  # bytes of the current chunk still to come

    @property
    def started(self) -> bool:
        """Whether any byte arrived (a connection without one is a health probe)."""
        return bool(self._buffer) or self.envelope is not None

    def feed(self, data: bytes) -> list[bytes]:
        if self.complete and data:
            raise WireError("bytes after the trailer")
        self._buffer += data
        pieces: list[bytes] = []
        while self._buffer and not self.complete:
            if self._chunk_left:
                piece = bytes(self._buffer[: self._chunk_left])
                del self._buffer[: len(piece)]
                self._chunk_left -= len(piece)
                self._digest.update(piece)
                pieces.append(piece)
                continue
            line = self._line()
            if line is None:
                break
            if self.envelope is None:
                self._read_envelope(line)
                if self.envelope is None:  # the envelope's bytes have not all arrived
                    break
            elif line.startswith(b"0"):
                self._verify_trailer(line)
            else:
                self._start_chunk(line)
        if self.complete and self._buffer:
            raise WireError("bytes after the trailer")
        return pieces

    def finish(self) -> None:
        """End of stream: only a verified trailer makes the message complete."""
        if self.envelope is None:
            raise WireError("connection closed before the envelope")
        if not self.complete:
            raise WireError(f"connection closed after {self.total} bytes without a trailer")

    def _line(self) -> bytes | None:
        """The next framing line without its newline, or None until it has arrived."""
        end = self._buffer.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if len(self._buffer) >= MAX_LINE:
                raise WireError("framing line too long")
            return None
        return bytes(self._buffer[:end])

    def _consume_line(self, line: bytes) -> None:
        del self._buffer[: len(line) + 1]

    def _read_envelope(self, line: bytes) -> None:
        length = canonical_length(line, MAX_ENVELOPE, "envelope length")
        if len(self._buffer) < len(line) + 1 + length:
            return
        self._consume_line(line)
        raw = bytes(self._buffer[:length])
        del self._buffer[:length]
        fields = raw.decode("utf-8", "surrogateescape").split("\0")
        if len(fields) != 4 or fields[0] != VERSION:
            raise WireError("unknown envelope format")
        self.envelope = WireEnvelope(fields[1], fields[2], fields[3])

    def _start_chunk(self, line: bytes) -> None:
        length = canonical_length(line, CHUNK, "chunk length")
        if length == 0:  # "0" alone: neither a chunk nor a trailer
            raise WireError("empty chunk")
        if self.total + length > self.max_message:
            raise TooLarge(f"message larger than {self.max_message} bytes")
        self._consume_line(line)
        self.total += length
        self._chunk_left = length

    def _verify_trailer(self, line: bytes) -> None:
        match = _TRAILER.fullmatch(line)
        if match is None:
            raise WireError("malformed trailer")
        if int(match.group(2)) != self.total:
            raise WireError(f"trailer says {int(match.group(2))} bytes, {self.total} arrived")
        if match.group(1).decode() != self._digest.hexdigest():
            raise WireError("trailer sha256 does not match the message")
        self._consume_line(line)
        self.complete = True


def encode(sender: str, recipient: str, queue_id: str, message: bytes) -> bytes:
    """What a well-behaved client sends (tests and tools; the real client is deliver.c)."""
    envelope = "\0".join((VERSION, sender, recipient, queue_id)).encode("utf-8", "surrogateescape")
    parts = [b"%d\n" % len(envelope), envelope]
    for start in range(0, len(message), CHUNK):
        chunk = message[start : start + CHUNK]
        parts += [b"%d\n" % len(chunk), chunk]
    digest = hashlib.sha256(message).hexdigest().encode()
    parts.append(b"0 %s %d\n" % (digest, len(message)))
    return b"".join(parts)


def decode(data: bytes, max_message: int) -> tuple[WireEnvelope, bytes]:
    """A whole connection's bytes → (envelope, message); WireError unless complete."""
    decoder = Decoder(max_message)
    message = b"".join(decoder.feed(data))
    decoder.finish()
    assert decoder.envelope is not None
    return decoder.envelope, message


def format_reply(status: int, text: str) -> bytes:
    return f"{status} {text}\n".encode("ascii", "replace")
