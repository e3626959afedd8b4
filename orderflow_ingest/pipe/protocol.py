"""The local wire format between the per-message `deliver` client and the delivery service.

The client (pipe/deliver.c, which writes this format in C) sends a length line, then the
envelope fields separated by NUL (argv strings cannot hold a NUL, so no escaping is needed),
then the raw message until it shuts down its sending side. The service answers one line:
``<exit status> <short text>``.
"""

from __future__ import annotations

MAX_ENVELOPE = 64 * 1024
CHUNK = 64 * 1024
VERSION = "OFI1"


def parse_envelope(buffer: bytes) -> tuple[tuple[str, str, str], bytes] | None:
    """((sender, recipient, queue_id), rest) once the envelope is complete, else None."""
    length_line, newline, rest = buffer.partition(b"\n")
    if not newline:
        if len(buffer) > 20:
            raise ValueError("no envelope length")
        return None
    length = int(length_line)
    if length > MAX_ENVELOPE:
        raise ValueError("envelope too long")
    if len(rest) < length:
        return None
    fields = rest[:length].decode("utf-8", "surrogateescape").split("\0")
    if len(fields) != 4 or fields[0] != VERSION:
        raise ValueError("unknown envelope format")
    return (fields[1], fields[2], fields[3]), rest[length:]


def format_reply(status: int, text: str) -> bytes:
    return f"{status} {text}\n".encode("ascii", "replace")
