"""winmail.dat (Outlook's TNEF): the files inside are the documents.

tnefparse (the maintained library) reads a whole blob into memory and copies it a few times
over (~3x the blob at peak), so it unpacks only blobs up to STREAM_THRESHOLD. A larger
winmail.dat, typically one carrying big scans, is read attribute by attribute from its spool
file by `stream_unpack`: the TNEF framing is a plain sequence of (level, id, length, data,
checksum), so each file's attAttachData is copied to its own sink in chunks, and only the small
attributes (titles, MAPI property blocks, which tnefparse decodes) are held in memory. What
neither can unpack is stored as winmail.dat itself: an order is never lost, only less handy.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from orderflow_ingest.jobs import filenames

# Blobs up to this size are unpacked by tnefparse in memory; larger ones are streamed.
STREAM_THRESHOLD = 4 * 1024 * 1024
# The streaming reader holds no single attribute larger than this in memory.
MAX_ATTRIBUTE_IN_MEMORY = 1024 * 1024
MAX_NESTING = 3
COPY_CHUNK = 256 * 1024

SIGNATURE = 0x223E9F78
LVL_MESSAGE, LVL_ATTACHMENT = 1, 2
ATT_OEM_CODEPAGE = 0x9007
ATT_ATTACH_REND_DATA = 0x9002  # starts each attachment
ATT_ATTACH_TITLE = 0x8010
ATT_ATTACH_DATA = 0x800F
ATT_ATTACHMENT = 0x9005  # the attachment's MAPI properties
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_DATA = 0x3701

# tnefparse logs a warning per odd attribute; our own record says what happened.
logging.getLogger("tnefparse").setLevel(logging.ERROR)


class TnefError(Exception):
    """The blob is not TNEF tnefparse can read."""


@dataclass
class TnefFile:
    index_path: str  # "1", "2", or "2.1" for a file inside an attached message
    name: str | None
    data: bytes


def unpack(blob: bytes) -> list[TnefFile]:
    """The files inside a TNEF blob, in order; raises TnefError when it cannot be read."""
    from tnefparse.tnef import TNEF  # imported here: only Outlook mail needs it

    try:
        tnef = TNEF(blob, do_checksum=False)
        return list(_files(tnef, "", 0))
    except Exception as error:  # tnefparse raises whatever a malformed blob trips over
        raise TnefError(f"{type(error).__name__}: {error}"[:200]) from error


def _files(tnef: object, prefix: str, depth: int) -> Iterator[TnefFile]:
    for number, attachment in enumerate(getattr(tnef, "attachments", []), 1):
        path = f"{prefix}{number}"
        embedded = getattr(attachment, "embed", None)
        if embedded is not None and depth < MAX_NESTING:
            yield from _files(embedded, path + ".", depth + 1)
            continue
        data = attachment.data or b""
        if not data:
            continue
        yield TnefFile(path, _name(attachment), bytes(data))


def _name(attachment: object) -> str | None:
    """Long filename when present, else the 8.3 title; bytes decoded leniently."""
    for getter in ("long_filename", "name"):
        try:
            value = getattr(attachment, getter)
            value = value() if callable(value) else value
        except Exception:  # tnefparse decodes names strictly and may raise
            value = getattr(attachment, "_name", None)
        if isinstance(value, bytes):
            value = filenames.decode_bytes(value)[0]
        if isinstance(value, str) and value.strip("\x00 "):
            return value.strip("\x00 ")
    return None


@dataclass
class StreamedFile:
    index_path: str
    name: str | None
    sink: Any = None
    title: str | None = None
    extra: list[str] = field(default_factory=list)


def stream_unpack(handle: BinaryIO, size: int, make_sink: Callable[[], Any]) -> list[StreamedFile]:
    """The files of a TNEF blob read from `handle`, each copied to a sink from `make_sink`.

    Raises TnefError on anything that is not well-formed TNEF (the caller then stores the
    blob itself), including an attachment whose data is not in attAttachData.
    """
    from tnefparse.codepage import Codepage
    from tnefparse.mapi import decode_mapi

    header = handle.read(6)
    if len(header) < 6 or struct.unpack("<I", header[:4])[0] != SIGNATURE:
        raise TnefError("not TNEF (wrong signature)")
    position = 6
    codepage = "cp1252"
    files: list[StreamedFile] = []
    current: StreamedFile | None = None
    while position < size:
        head = handle.read(9)
        if len(head) < 9:
            raise TnefError("truncated attribute header")
        level, name, _kind, length = struct.unpack("<BHHI", head)
        position += 9
        if position + length + 2 > size:
            raise TnefError("attribute runs past the end of the blob")
        attachment_level = level == LVL_ATTACHMENT
        if attachment_level and name == ATT_ATTACH_REND_DATA:
            current = StreamedFile(str(len(files) + 1), None)
            files.append(current)
            handle.seek(length, 1)
        elif attachment_level and name == ATT_ATTACH_DATA and current is not None:
            current.sink = make_sink()
            _copy(handle, length, current.sink)
        elif level == LVL_MESSAGE and name == ATT_OEM_CODEPAGE and length >= 4:
            codepage = Codepage(struct.unpack("<I", handle.read(4))[0]).codepage()
            handle.seek(length - 4, 1)
        elif (
            attachment_level
            and name in (ATT_ATTACH_TITLE, ATT_ATTACHMENT)
            and current is not None
            and length <= MAX_ATTRIBUTE_IN_MEMORY
        ):
            data = handle.read(length)
            if name == ATT_ATTACH_TITLE:
                current.title = filenames.decode_bytes(data.rstrip(b"\x00"), codepage)[0]
            else:
                _read_properties(current, decode_mapi(data, codepage), make_sink)
        else:
            handle.seek(length, 1)
        handle.seek(2, 1)  # checksum (not verified: tnefparse does not either by default)
        position += length + 2
    for file in files:
        if file.sink is None:
            raise TnefError(f"attachment {file.index_path} has no data this reader can stream")
        file.name = file.name or file.title
    return files


def _copy(handle: BinaryIO, length: int, sink: Any) -> None:
    remaining = length
    while remaining:
        chunk = handle.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise TnefError("attachment data cut short")
        sink.write(chunk)
        remaining -= len(chunk)


def _read_properties(
    file: StreamedFile, properties: list[Any], make_sink: Callable[[], Any]
) -> None:
    for prop in properties:
        if prop.name == PR_ATTACH_LONG_FILENAME:
            value = prop.data
            if isinstance(value, bytes):
                value = filenames.decode_bytes(value)[0]
            if isinstance(value, str) and value.strip("\x00 "):
                file.name = value.strip("\x00 ")
        elif prop.name == PR_ATTACH_DATA and file.sink is None:
            value = prop.data
            if isinstance(value, bytes) and value:
                file.sink = make_sink()
                file.sink.write(value)
