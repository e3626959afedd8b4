"""winmail.dat (Outlook's TNEF): the files inside are the documents.

tnefparse (the maintained library) reads a whole blob into memory and copies it a few times
over (~3x the blob at peak), so it unpacks only blobs up to STREAM_THRESHOLD. A larger
winmail.dat, typically one carrying big scans, is read attribute by attribute from its spool
file by `stream_unpack`: the TNEF framing is a plain sequence of (level, id, length, data,
checksum), so each file's attAttachData is copied to its own sink in chunks, and only the small
attributes (titles, MAPI property blocks, which tnefparse decodes) are held in memory. What
neither can unpack is stored as winmail.dat itself: an order is never lost, only less handy.

tnefparse trusts the blob's counts (a 47-byte winmail.dat used to cost ~17 minutes of CPU), so
`unpack_file` first checks the blob (tnefcheck.py), picks the linear reader when tnefparse's
per-attribute copies would be large, and runs the whole unpacking in a child process under CPU,
memory and time limits (sandbox.py). The child writes each file to its own spool file and closes
it at once; at most `max_files` are written, the rest are only listed.
"""

from __future__ import annotations

import base64
import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from orderflow_ingest.jobs import filenames, sandbox, tnefcheck
from orderflow_ingest.jobs.spool import SpoolSink

# Blobs up to this size are unpacked by tnefparse in memory; larger ones are streamed.
STREAM_THRESHOLD = 4 * 1024 * 1024
# The streaming reader holds no single attribute larger than this in memory.
MAX_ATTRIBUTE_IN_MEMORY = 1024 * 1024
MAX_NESTING = 3
COPY_CHUNK = 256 * 1024
# tnefparse copies the rest of the blob per attribute (memcpy, ~10 GB/s here): a real 4 MiB blob
# with a hundred attachments copies ~0.8 GiB, 4 MiB of 11-byte attributes ~800 GB (70 s of CPU).
# Above this budget the linear reader is used instead (same files, embedded messages aside).
COPY_BUDGET = 2 * 1024 * 1024 * 1024
# The child's limits. A real blob unpacks in well under a second; these only stop the hostile.
CPU_SECONDS = 20
WALL_SECONDS = 60.0
MEMORY_BASE = 256 * 1024 * 1024  # plus a few times the blob for tnefparse's copies
# Files beyond the cap are listed (path and name) up to this many; the rest only counted.
MAX_LISTED = 10_000

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
    has_data: bool = False


def stream_unpack(
    handle: BinaryIO,
    size: int,
    make_sink: Callable[[], Any],
    max_listed: int | None = None,
) -> tuple[list[StreamedFile], int]:
    """The files of a TNEF blob read from `handle`, each copied to a sink from `make_sink`.

    `make_sink` may return None (over the cap): that file's data is skipped. Attachments beyond
    `max_listed` are only counted. Returns (files, count of unlisted files). Raises TnefError
    on anything that is not well-formed TNEF (the caller then stores the blob itself),
    including an attachment whose data is not in attAttachData.
    """
    from tnefparse.codepage import Codepage
    from tnefparse.mapi import decode_mapi

    header = handle.read(6)
    if len(header) < 6 or struct.unpack("<I", header[:4])[0] != SIGNATURE:
        raise TnefError("not TNEF (wrong signature)")
    position = 6
    codepage = "cp1252"
    files: list[StreamedFile] = []
    unlisted = 0
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
            if max_listed is not None and len(files) >= max_listed:
                current = None
                unlisted += 1
            else:
                current = StreamedFile(str(len(files) + 1), None)
                files.append(current)
            handle.seek(length, 1)
        elif attachment_level and name == ATT_ATTACH_DATA and current is not None:
            current.has_data = True
            current.sink = make_sink()
            if current.sink is None:
                handle.seek(length, 1)
            else:
                _copy(handle, length, current.sink)
                current.sink.close()
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
                try:
                    tnefcheck.check_mapi(data, codepage)
                except tnefcheck.Unsafe as error:
                    raise TnefError(str(error)) from None
                _read_properties(current, decode_mapi(data, codepage), make_sink)
        else:
            handle.seek(length, 1)
        handle.seek(2, 1)  # checksum (not verified: tnefparse does not either by default)
        position += length + 2
    for file in files:
        if not file.has_data:
            raise TnefError(f"attachment {file.index_path} has no data this reader can stream")
        file.name = file.name or file.title
    return files, unlisted


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
        elif prop.name == PR_ATTACH_DATA and not file.has_data:
            value = prop.data
            if isinstance(value, bytes) and value:
                file.has_data = True
                file.sink = make_sink()
                if file.sink is not None:
                    file.sink.write(value)
                    file.sink.close()


# --- unpacking in a child under limits ---------------------------------------------------------


@dataclass
class UnpackedFile:
    index_path: str  # "1", "2", or "2.1" for a file inside an attached message
    name: str | None
    spool_path: str | None  # None: over the cap, not written
    size: int = 0
    sha256: str = ""
    head: bytes = b""


@dataclass
class Unpacked:
    files: list[UnpackedFile]  # written, at most max_files
    over_cap: list[UnpackedFile]  # listed, not written (at most MAX_LISTED)
    total: int  # every file inside, listed or not


def unpack_file(path: str, size: int, spool_dir: str, prefix: str, max_files: int) -> Unpacked:
    """The files of the winmail.dat spooled at `path`, unpacked in a child under limits.

    Each file is written to `spool_dir/prefix<n>` and closed at once. Raises TnefError when the
    blob cannot be read (or a count in it is impossible), sandbox.LimitExceeded when unpacking
    ran out of CPU, memory or time: both are content failures, never worth a retry.
    """
    limits = sandbox.Limits(
        cpu_seconds=CPU_SECONDS,
        memory_bytes=MEMORY_BASE + 4 * min(size, STREAM_THRESHOLD),
        wall_seconds=WALL_SECONDS,
        file_bytes=size + 1024 * 1024,
    )
    try:
        answer = sandbox.run_limited(
            _unpack_in_child, (path, size, spool_dir, prefix, max_files), limits
        )
    except sandbox.ChildFailed as error:
        raise TnefError(str(error)[:200]) from None
    if "error" in answer:
        raise TnefError(str(answer["error"])[:200])
    files = [_unpacked(entry, spool_dir, prefix) for entry in answer["files"]]
    over_cap = [_unpacked(entry, spool_dir, prefix) for entry in answer["over_cap"]]
    return Unpacked(files, over_cap, int(answer["total"]))


def _unpacked(entry: dict[str, Any], spool_dir: str, prefix: str) -> UnpackedFile:
    spool_path = None
    if entry.get("spool") is not None:
        spool_path = os.path.join(spool_dir, f"{prefix}{int(entry['spool']):06d}")
    return UnpackedFile(
        index_path=str(entry["index_path"]),
        name=entry.get("name"),
        spool_path=spool_path,
        size=int(entry.get("size", 0)),
        sha256=str(entry.get("sha256", "")),
        head=base64.b64decode(entry.get("head", "")),
    )


class _Writer:
    """In the child: numbered spool files, the first `max_files` only; the rest listed."""

    def __init__(self, spool_dir: str, prefix: str, max_files: int) -> None:
        self.spool_dir = spool_dir
        self.prefix = prefix
        self.max_files = max_files
        self.numbers: dict[str, int] = {}  # spool path -> its number

    def sink(self) -> SpoolSink | None:
        if len(self.numbers) >= self.max_files:
            return None
        number = len(self.numbers) + 1
        path = os.path.join(self.spool_dir, f"{self.prefix}{number:06d}")
        self.numbers[path] = number
        return SpoolSink(path)

    def entry(self, index_path: str, name: str | None, sink: SpoolSink | None) -> dict[str, Any]:
        if sink is None:
            return {"index_path": index_path, "name": name}
        return {
            "index_path": index_path,
            "name": name,
            "spool": self.numbers[sink.path],
            "size": sink.size,
            "sha256": sink.sha256,
            "head": base64.b64encode(sink.head).decode("ascii"),
        }


def _unpack_in_child(
    path: str, size: int, spool_dir: str, prefix: str, max_files: int
) -> dict[str, Any]:
    """Runs in the sandbox: check, unpack, write; returns a JSON-able answer."""
    writer = _Writer(spool_dir, prefix, max_files)
    try:
        with open(path, "rb") as handle:
            if size <= STREAM_THRESHOLD:
                blob = handle.read()
                cost = tnefcheck.check(blob)
                if cost.copy_bytes <= COPY_BUDGET:
                    return _write_unpacked(unpack(blob), writer)
                del blob
                handle.seek(0)
            return _write_streamed(handle, size, writer)
    except (TnefError, tnefcheck.Unsafe) as error:
        return {"error": str(error)}


def _write_unpacked(files: list[TnefFile], writer: _Writer) -> dict[str, Any]:
    written: list[dict[str, Any]] = []
    over: list[dict[str, Any]] = []
    for file in files:
        sink = writer.sink()
        if sink is None:
            if len(over) < MAX_LISTED:
                over.append(writer.entry(file.index_path, file.name, None))
            continue
        sink.write(file.data)
        sink.close()
        written.append(writer.entry(file.index_path, file.name, sink))
    return {"files": written, "over_cap": over, "total": len(files)}


def _write_streamed(handle: BinaryIO, size: int, writer: _Writer) -> dict[str, Any]:
    files, unlisted = stream_unpack(
        handle, size, writer.sink, max_listed=writer.max_files + MAX_LISTED
    )
    written = [writer.entry(f.index_path, f.name, f.sink) for f in files if f.sink is not None]
    over = [writer.entry(f.index_path, f.name, None) for f in files if f.sink is None]
    return {"files": written, "over_cap": over, "total": len(files) + unlisted}
