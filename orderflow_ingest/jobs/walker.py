"""A streaming MIME walker: headers parsed per part, bodies streamed, memory bounded by a constant.

`email.message_from_binary_file` holds the whole message, and `get_payload(decode=True)` a second
copy of each part: 2-3x the message size in RAM. This walker reads the message in fixed-size
chunks, finds boundary lines with `bytes.find`, parses each part's header block with the stdlib
header parser (small and bounded), and pushes body bytes through a chunked transfer decoder into
whatever sink the handler returns. The walker knows MIME structure only; what a part *is* (a
document, a body, a signature) is decided by the handler.

Part paths: the message itself is `1`; the children of a multipart at path P are P.1, P.2, ...;
the message inside a message/rfc822 part at P is P.1. Every entity, containers included, has
its own path, so every decision can be recorded against one.

Boundary rules follow the stdlib parser (a delimiter line is `--boundary`, optionally `--`,
optional blank space, end of line) and RFC 2046 §5.1.2: an enclosing multipart's boundary also
ends every part nested inside it, so a missing close delimiter loses nothing that follows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesHeaderParser
from typing import Any, BinaryIO, Protocol

from orderflow_ingest.headertext import text_to_bytes
from orderflow_ingest.jobs import filenames, safetext
from orderflow_ingest.jobs.decoders import (
    Decoder,
    UudecodeDecoder,
    make_decoder,
    normalise_encoding,
)
from orderflow_ingest.jobs.file_types import normalise

CHUNK = 256 * 1024
MAX_LINE = 64 * 1024
# More parts than this in one message is an attack or a broken generator, not an order.
MAX_PARTS = 5000
_HEADER_LINE = re.compile(rb"^(From |[\x21-\x39\x3b-\x7e]*:|[\t ])")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_PARSER = BytesHeaderParser(policy=email_policy.compat32)
# Defects the stdlib reports only because it is shown headers without their body.
_HEADERS_ONLY_ARTEFACTS = {"MultipartInvariantViolationDefect", "StartBoundaryNotFoundDefect"}


class SourceError(Exception):
    """Reading the raw message failed (S3 or disk): an infrastructure fault, worth a retry."""


class UnparseableMessage(Exception):
    """The message cannot be walked at all (empty, or a header block beyond the limit)."""


@dataclass
class PartInfo:
    """What the headers of one MIME entity say, decoded and normalised."""

    path: str
    depth: int
    content_type: str  # normalised type/subtype; "" when missing or unparseable
    params: dict[str, str]
    disposition: str  # "inline", "attachment", other, or ""
    disposition_params: dict[str, str]
    filename: str | None  # decoded, NOT sanitised
    encoding: str
    content_id: str | None
    content_location: str | None
    parent_type: str | None
    index: int  # position among its siblings, 1-based; 0 for the message itself
    in_related: bool = False
    related_root: bool = False
    type_defaulted: bool = False
    defects: list[str] = field(default_factory=list)

    @property
    def maintype(self) -> str:
        return self.content_type.split("/", 1)[0] if self.content_type else ""


@dataclass
class LeafEnd:
    """How a leaf's body ended."""

    size_encoded: int
    truncated: bool  # the message ended before the part's closing boundary
    defects: list[str]
    corrupt: bool
    uuencode_name: str | None


class Sink(Protocol):
    def write(self, data: bytes) -> Any: ...


class Handler(Protocol):
    """What the walker asks about each entity; decisions live with the implementer."""

    def container(self, info: PartInfo, walked: bool, reason: str) -> None: ...

    def leaf(self, info: PartInfo) -> Sink | None: ...

    def leaf_done(self, info: PartInfo, sink: Sink | None, end: LeafEnd) -> None: ...


@dataclass
class _Term:
    level: int
    close: bool


_NEED_MORE = object()


class _TooManyParts(Exception):
    """Unwinds the walk: nothing after the part limit is looked at."""


class MimeWalker:
    """Walk one message from a binary stream, calling `handler` for every entity."""

    def __init__(
        self,
        source: BinaryIO,
        handler: Handler,
        max_depth: int = 20,
        max_header_bytes: int = 1024 * 1024,
        path_prefix: str = "",
        root_depth: int = 0,
    ) -> None:
        self._source = source
        self._handler = handler
        self._max_depth = max_depth
        self._max_header_bytes = max_header_bytes
        self._prefix = path_prefix
        self._root_depth = root_depth
        self._buf = b"\n"  # a virtual line break: the message starts at the start of a line
        self._pos = 1
        self._eof = False
        self.bytes_read = 0
        self.parts = 0
        self.defects: list[tuple[str, str]] = []
        self._delims: list[bytes] = []

    # -- reading -----------------------------------------------------------------------------

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            data = self._source.read(CHUNK)
        except Exception as error:  # botocore, urllib3, OSError: all mean "the source broke"
            raise SourceError(f"reading the message failed: {type(error).__name__}") from error
        if not data:
            self._eof = True
            return False
        self.bytes_read += len(data)
        self._buf = self._buf[self._pos - 1 :] + data
        self._pos = 1
        return True

    def _readline(self, limit: int = MAX_LINE) -> bytes:
        while True:
            index = self._buf.find(b"\n", self._pos)
            if index != -1 and index + 1 - self._pos <= limit:
                line = self._buf[self._pos : index + 1]
                self._pos = index + 1
                return line
            if len(self._buf) - self._pos >= limit:
                line = self._buf[self._pos : self._pos + limit]
                self._pos += limit
                return line
            if not self._fill():
                line = self._buf[self._pos :]
                self._pos = len(self._buf)
                return line

    # -- boundaries --------------------------------------------------------------------------

    def _match(self, start: int, levels: int) -> Any:
        """Is there a delimiter line of one of the first `levels` boundaries at `start`?

        Returns (level, close, end_of_line), None, or _NEED_MORE when the buffer ends first.
        """
        buf = self._buf
        size = len(buf)
        eof = self._eof
        need_more = False
        for level in range(levels - 1, -1, -1):
            delim = self._delims[level]
            end = start + len(delim)
            if size < end:
                if not eof and buf.startswith(delim[: size - start], start):
                    need_more = True
                continue
            if not buf.startswith(delim, start):
                continue
            if size < end + 2 and not eof and (size == end or buf[end] == 0x2D):
                need_more = True  # cannot tell `--boundary--` from `--boundary-x` yet
                continue
            close = buf.startswith(b"--", end)
            cursor = end + 2 if close else end
            while cursor < size and buf[cursor] in (0x20, 0x09) and cursor - end < 1024:
                cursor += 1
            if cursor >= size:
                if eof:
                    return (level, close, size)
                need_more = True
                continue
            byte = buf[cursor]
            if byte == 0x0A:
                return (level, close, cursor + 1)
            if byte == 0x0D:
                if cursor + 1 < size:
                    return (level, close, cursor + 2 if buf[cursor + 1] == 0x0A else cursor + 1)
                if eof:
                    return (level, close, cursor + 1)
                need_more = True
        return _NEED_MORE if need_more else None

    def _scan(self, emit: Callable[[bytes], Any] | None, levels: int) -> _Term | None:
        """Stream body bytes to `emit` up to the next delimiter of the first `levels` boundaries.

        The line break before a delimiter belongs to the delimiter, so the last one or two
        bytes of each buffer are held back until the next bytes show what follows them.
        """
        if levels == 0:
            while True:
                if self._pos < len(self._buf) and emit is not None:
                    emit(self._buf[self._pos :])
                self._pos = len(self._buf)
                if not self._fill():
                    return None
        while True:
            buf = self._buf
            start = self._pos
            search = start - 1
            pending = -1
            while True:
                index = buf.find(b"\n--", search)
                if index == -1:
                    break
                found = self._match(index + 1, levels)
                if found is _NEED_MORE:
                    pending = index
                    break
                if found is None:
                    search = index + 1
                    continue
                level, close, line_end = found
                end = index
                if end > start and buf[end - 1] == 0x0D:
                    end -= 1
                if emit is not None and end > start:
                    emit(buf[start:end])
                self._pos = line_end
                return _Term(level, close)
            if self._eof:
                if emit is not None and len(buf) > start:
                    emit(buf[start:])
                self._pos = len(buf)
                return None
            safe = len(buf) - 2
            if pending != -1:
                safe = min(safe, pending - 1)
            safe = max(safe, start)
            if emit is not None and safe > start:
                emit(buf[start:safe])
            self._pos = safe
            self._fill()

    # -- headers -----------------------------------------------------------------------------

    def _read_headers(self, levels: int, is_root: bool) -> tuple[bytes, list[str]]:
        """The header block of the entity at the current position, and what was wrong with it."""
        defects: list[str] = []
        lines: list[bytes] = []
        total = 0
        overflow = False
        while True:
            line = self._readline()
            if not line:
                break
            if line in (b"\n", b"\r\n"):
                break
            if line.startswith(b"--") and levels:
                self._pos -= len(line)
                if self._match(self._pos, levels) not in (None, _NEED_MORE):
                    break
                self._pos += len(line)
            if not _HEADER_LINE.match(line):
                self._pos -= len(line)
                defects.append("missing blank line between headers and body")
                break
            pieces = [line]
            while not line.endswith(b"\n"):  # a line longer than MAX_LINE comes in pieces
                line = self._readline()
                if not line:
                    break
                pieces.append(line)
                if sum(len(piece) for piece in pieces) > self._max_header_bytes:
                    pieces = pieces[:1]  # keep the start; the rest is over the limit anyway
                    total = self._max_header_bytes
            for piece in pieces:
                total += len(piece)
            if total > self._max_header_bytes:
                if is_root:
                    raise UnparseableMessage(
                        f"header block larger than {self._max_header_bytes} bytes"
                    )
                overflow = True
            if not overflow:
                lines.extend(pieces)
        if overflow:
            defects.append(f"header block larger than {self._max_header_bytes} bytes; rest ignored")
        return b"".join(lines), defects

    # -- entities ----------------------------------------------------------------------------

    def walk(self) -> None:
        """Walk the whole message. Raises UnparseableMessage or SourceError."""
        if not self._fill() and self._pos >= len(self._buf):
            raise UnparseableMessage("empty message")
        try:
            term = self._entity(self._prefix + "1", self._root_depth, 0, "text/plain", None, 0)
        except _TooManyParts:
            self._defect(self._prefix + "1", f"more than {MAX_PARTS} parts: the rest not walked")
            self._delims.clear()
            term = None
        if term is not None:
            self._defect(self._prefix + "1", "stray boundary line after the message")
        self._scan(None, 0)

    def _defect(self, path: str, text: str) -> None:
        self.defects.append((path, text))

    def _describe(
        self,
        header_block: bytes,
        header_defects: list[str],
        path: str,
        depth: int,
        default_type: str,
        parent: PartInfo | None,
        index: int,
    ) -> PartInfo:
        message = _HEADER_PARSER.parsebytes(header_block, headersonly=True)
        defects = list(header_defects)
        defects += [
            type(defect).__name__
            for defect in message.defects
            if type(defect).__name__ not in _HEADERS_ONLY_ARTEFACTS
        ]
        raw: dict[str, str] = {}
        for name, value in message.raw_items():
            key = name.strip().lower()
            if key not in raw:
                raw[key] = _FOLD.sub("", str(value)).strip()
        declared = raw.get("content-type", "")
        token, params, param_defects = filenames.parse_header_params(declared)
        defects += param_defects
        content_type = normalise(token)
        type_defaulted = False
        if not content_type and token.split("/", 1)[0].strip() == "multipart":
            # RFC 2046 §5.1.7: an unrecognised multipart subtype is treated as multipart/mixed;
            # a malformed one (`multipart/*`) too, or its attachments vanish into one body.
            defects.append(f"malformed multipart type {declared[:60]!r}; walked as mixed")
            content_type = "multipart/mixed"
        if not content_type:
            if declared:
                defects.append(f"unparseable Content-Type {declared[:60]!r}")
            content_type = default_type
            type_defaulted = True
        disposition_raw = raw.get("content-disposition", "")
        disposition, disposition_params, disposition_defects = filenames.parse_header_params(
            disposition_raw
        )
        defects += disposition_defects
        filename = (
            disposition_params.get("filename")
            or params.get("name")
            or disposition_params.get("name")
            or None
        )
        content_id = _angle_free(raw.get("content-id"))
        in_related = parent is not None and parent.content_type == "multipart/related"
        related_root = False
        if in_related and parent is not None:
            start = _angle_free(parent.params.get("start"))
            related_root = (content_id == start) if start else index == 1
        return PartInfo(
            path=path,
            depth=depth,
            content_type=content_type,
            params=params,
            disposition=disposition,
            disposition_params=disposition_params,
            filename=_clean_name(filename),
            encoding=normalise_encoding(
                filenames.decode_header_text(raw.get("content-transfer-encoding", ""))
            ),
            content_id=content_id,
            content_location=raw.get("content-location") or None,
            parent_type=parent.content_type if parent else None,
            index=index,
            in_related=in_related,
            related_root=related_root,
            type_defaulted=type_defaulted,
            defects=defects,
        )

    def _entity(
        self,
        path: str,
        depth: int,
        levels: int,
        default_type: str,
        parent: PartInfo | None,
        index: int,
    ) -> _Term | None:
        self.parts += 1
        header_block, header_defects = self._read_headers(levels, is_root=parent is None)
        info = self._describe(
            header_block, header_defects, path, depth, default_type, parent, index
        )
        if self.parts > MAX_PARTS:
            self._handler.container(info, False, f"more than {MAX_PARTS} parts: not walked")
            raise _TooManyParts
        if info.maintype == "multipart":
            boundary = info.params.get("boundary")
            if not boundary:
                info.defects.append("multipart without a boundary parameter; read as text")
                info.content_type = "text/plain"
            elif depth >= self._max_depth:
                self._handler.container(info, False, f"nested deeper than {self._max_depth}")
                return self._scan(None, levels)
            else:
                return self._multipart(info, boundary, levels)
        if info.content_type in ("message/rfc822", "message/global"):
            if info.encoding not in ("", "7bit", "8bit", "binary"):
                pass  # an encoded message travels as a leaf; the handler may walk it decoded
            elif depth >= self._max_depth:
                self._handler.container(info, False, f"nested deeper than {self._max_depth}")
                return self._scan(None, levels)
            else:
                self._handler.container(info, True, "attached message: walked into")
                return self._entity(path + ".1", depth + 1, levels, "text/plain", info, 1)
        return self._leaf(info, levels)

    def _multipart(self, info: PartInfo, boundary: str, levels: int) -> _Term | None:
        if info.encoding not in ("", "7bit", "8bit", "binary"):
            info.defects.append(f"transfer encoding {info.encoding!r} on a multipart ignored")
        self._handler.container(info, True, f"{info.content_type}: walked into")
        own = levels
        self._delims.append(b"--" + text_to_bytes(boundary))
        try:
            child_type = (
                "message/rfc822" if info.content_type == "multipart/digest" else "text/plain"
            )
            term = self._scan(None, own + 1)  # preamble
            if term is None:
                self._defect(info.path, "multipart boundary never found; no parts")
                return None
            if term.level < own:
                self._defect(info.path, "multipart ended by an enclosing boundary before any part")
                return term
            count = 0
            while not term.close:
                count += 1
                next_term = self._entity(
                    f"{info.path}.{count}", info.depth + 1, own + 1, child_type, info, count
                )
                if next_term is None:
                    self._defect(info.path, "message ended before the closing boundary")
                    return None
                if next_term.level < own:
                    self._defect(info.path, "closing boundary missing; enclosing boundary ends it")
                    return next_term
                term = next_term
            if count == 0:
                self._defect(info.path, "multipart with no parts")
        finally:
            self._delims.pop()
        return self._scan(None, levels)  # epilogue, up to the enclosing boundary

    def _leaf(self, info: PartInfo, levels: int) -> _Term | None:
        sink = self._handler.leaf(info)
        decoder: Decoder
        decoder, unknown = make_decoder(info.encoding)
        defects: list[str] = [unknown] if unknown else []
        size = 0
        if sink is None:
            term = self._scan(None, levels)
        else:
            write = sink.write
            feed = decoder.feed

            def emit(data: bytes) -> None:
                nonlocal size
                size += len(data)
                decoded = feed(data)
                if decoded:
                    write(decoded)

            term = self._scan(emit, levels)
            tail = decoder.finish()
            if tail:
                write(tail)
            defects += decoder.defects
        truncated = term is None and levels > 0
        if truncated:
            defects.append("message ended inside this part (truncated)")
        end = LeafEnd(
            size_encoded=size,
            truncated=truncated,
            defects=defects,
            corrupt=decoder.corrupt,
            uuencode_name=decoder.begin_name if isinstance(decoder, UudecodeDecoder) else None,
        )
        self._handler.leaf_done(info, sink, end)
        return term


def _clean_name(filename: str | None) -> str | None:
    """The decoded name without NUL or lone surrogates (kept whole: the extension is at the end)."""
    if not filename or not filename.strip():
        return None
    return safetext.clean(filename.strip(), limit=None)


def _angle_free(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip() or None
