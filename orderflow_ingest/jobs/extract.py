"""One message in, its documents (spooled, hashed, typed) and a reason for every other part out.

This is the classification `inspect` prints and the RQ job stores: the walker streams the
message, `classify` decides each part, documents are decoded into spool files in a private
temporary directory (sha256, size and the first bytes for type sniffing computed on the way),
winmail.dat is unpacked, base64-encoded attached messages are decoded and walked, and images
are settled once every HTML body has been read. No backend is touched here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from orderflow_ingest.jobs import filenames, mimetypes, tnef
from orderflow_ingest.jobs.classify import (
    Decision,
    Kind,
    References,
    ReferenceScanner,
    classify_container,
    classify_leaf,
    decide_image,
)
from orderflow_ingest.jobs.walker import (
    LeafEnd,
    MimeWalker,
    PartInfo,
    Sink,
    SourceError,
    UnparseableMessage,
)

DEFAULT_MAX_DEPTH = 20
DEFAULT_MAX_HEADER_BYTES = 1024 * 1024


class SpoolSink:
    """Decoded bytes to a file, with sha256, size and the first bytes on the way."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), after the walk
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, data: bytes) -> None:
        if len(self.head) < mimetypes.HEAD_BYTES:
            self.head += data[: mimetypes.HEAD_BYTES - len(self.head)]
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass
class Document:
    part: str
    filename: str  # sanitised (or made from the part path): safe for keys and paths
    original_filename: str | None  # as decoded from the headers, for display and audit
    mime_type: str
    declared_type: str
    size_bytes: int
    sha256: str
    spool_path: str
    status: str  # STORED, or FAILED for a corrupt or truncated part (stored, not extracted)
    reason: str
    defects: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["spool_path"]
        return data


@dataclass
class Skipped:
    part: str
    content_type: str
    decision: str
    reason: str


@dataclass
class Extraction:
    """The outcome for one message. Close it (or use `with`) to delete the spool files."""

    documents: list[Document]
    skipped: list[Skipped]
    defects: list[dict[str, str]]
    error: dict[str, str] | None
    size_bytes: int
    _spool: tempfile.TemporaryDirectory[str] | None = None

    def close(self) -> None:
        if self._spool is not None:
            self._spool.cleanup()
            self._spool = None

    def __enter__(self) -> Extraction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def as_json(self) -> dict[str, Any]:
        return {
            "documents": [document.as_json() for document in self.documents],
            "skipped": [asdict(skipped) for skipped in self.skipped],
            "defects": self.defects,
            "error": self.error,
            "size_bytes": self.size_bytes,
        }


def _path_key(path: str) -> tuple[int, ...]:
    return tuple(int(piece) if piece.isdigit() else 0 for piece in path.split("."))


class _Extractor:
    """The walker's handler: classifies, spools and records."""

    def __init__(self, spool_dir: str, max_depth: int, max_header_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.max_depth = max_depth
        self.max_header_bytes = max_header_bytes
        self.references = References()
        self.documents: list[Document] = []
        self.skipped: list[Skipped] = []
        self.defects: list[dict[str, str]] = []
        self._decisions: dict[str, Decision] = {}
        self._candidates: list[tuple[PartInfo, SpoolSink, LeafEnd]] = []
        self._counter = 0
        self._open: list[SpoolSink] = []

    # -- the walker's questions ---------------------------------------------------------------

    def container(self, info: PartInfo, walked: bool, reason: str) -> None:
        self._note_defects(info.path, info.defects)
        decision = classify_container(info, walked, reason)
        self._skip(info, decision)

    def leaf(self, info: PartInfo) -> Sink | None:
        decision = classify_leaf(info)
        self._decisions[info.path] = decision
        if decision.captures:
            sink = SpoolSink(self._spool_path())
            self._open.append(sink)
            return sink
        if decision.kind is Kind.BODY and info.content_type == "text/html":
            return ReferenceScanner(self.references)
        return None

    def leaf_done(self, info: PartInfo, sink: Sink | None, end: LeafEnd) -> None:
        decision = self._decisions.pop(info.path)
        self._note_defects(info.path, info.defects + end.defects)
        if isinstance(sink, ReferenceScanner):
            sink.close()
        if not isinstance(sink, SpoolSink):
            self._skip(info, decision)
            return
        sink.close()
        if decision.kind is Kind.TNEF:
            self._unpack_tnef(info, sink, end)
        elif decision.kind is Kind.ENCODED_MESSAGE:
            self._walk_encoded(info, sink, end)
        elif decision.kind is Kind.CANDIDATE_IMAGE:
            self._candidates.append((info, sink, end))
        else:
            self._add_document(info, sink, end, decision.reason)

    # -- outcomes ------------------------------------------------------------------------------

    def close_sinks(self) -> None:
        """After a walk that stopped early, no spool file stays open."""
        for sink in self._open:
            sink.close()
        self._open.clear()

    def finish(self) -> None:
        """Settle the images now that every HTML body has been scanned."""
        self.close_sinks()
        for info, sink, end in self._candidates:
            decision = decide_image(info, self.references)
            if decision.kind is Kind.DOCUMENT:
                self._add_document(info, sink, end, decision.reason)
            else:
                sink.discard()
                self._skip(info, decision)
        self._candidates.clear()
        self.documents.sort(key=lambda document: _path_key(document.part))
        self.skipped.sort(key=lambda skipped: _path_key(skipped.part))

    def _spool_path(self) -> str:
        self._counter += 1
        return os.path.join(self.spool_dir, f"part-{self._counter:06d}")

    def _note_defects(self, path: str, defects: list[str]) -> None:
        for defect in defects:
            self.defects.append({"part": path, "defect": defect})

    def _skip(self, info: PartInfo, decision: Decision) -> None:
        self.skipped.append(
            Skipped(info.path, info.content_type, decision.kind.value, decision.reason)
        )

    def _add_document(self, info: PartInfo, sink: SpoolSink, end: LeafEnd, reason: str) -> None:
        original = info.filename or end.uuencode_name
        declared = "" if info.type_defaulted else info.content_type
        safe = filenames.sanitise(original)
        mime_type = mimetypes.refine(declared, safe or original, sink.head)
        status = "STORED"
        defects = list(info.defects) + list(end.defects)
        if end.truncated or end.corrupt:
            status = "FAILED"
            reason += "; corrupt: " + ("truncated" if end.truncated else "; ".join(end.defects))
        self.documents.append(
            Document(
                part=info.path,
                filename=safe or filenames.fallback_name(info.path, mime_type),
                original_filename=original,
                mime_type=mime_type,
                declared_type=info.content_type,
                size_bytes=sink.size,
                sha256=sink.sha256,
                spool_path=sink.path,
                status=status,
                reason=reason,
                defects=defects,
            )
        )

    def _new_sink(self) -> SpoolSink:
        sink = SpoolSink(self._spool_path())
        self._open.append(sink)
        return sink

    def _unpack_tnef(self, info: PartInfo, sink: SpoolSink, end: LeafEnd) -> None:
        if end.truncated or end.corrupt:
            # tnefparse reads a cut blob without complaint and returns cut files.
            self._add_document(info, sink, end, "winmail.dat damaged: stored as it is")
            return
        files: list[tuple[str, str | None, SpoolSink]] = []
        try:
            if sink.size > tnef.STREAM_THRESHOLD:
                with open(sink.path, "rb") as handle:
                    streamed = tnef.stream_unpack(handle, sink.size, self._new_sink)
                files = [(f.index_path, f.name, f.sink) for f in streamed]
            else:
                with open(sink.path, "rb") as handle:
                    blob = handle.read()
                unpacked = tnef.unpack(blob)
                del blob
                for inner in unpacked:
                    inner_sink = self._new_sink()
                    inner_sink.write(inner.data)
                    files.append((inner.index_path, inner.name, inner_sink))
                del unpacked
        except tnef.TnefError as error:
            for _, _, inner_sink in files:
                inner_sink.discard()
            reason = f"winmail.dat could not be unpacked ({error}): stored as it is"
            self._add_document(info, sink, end, reason)
            return
        sink.discard()
        if not files:
            self._skip(info, Decision(Kind.TNEF, "winmail.dat holds no files (message body only)"))
            return
        self._skip(info, Decision(Kind.TNEF, f"winmail.dat unpacked: {len(files)} file(s) inside"))
        for index_path, name, inner_sink in files:
            inner_sink.close()
            path = f"{info.path}.{index_path}"
            safe = filenames.sanitise(name)
            mime_type = mimetypes.refine("", safe, inner_sink.head)
            self.documents.append(
                Document(
                    part=path,
                    filename=safe or filenames.fallback_name(path, mime_type),
                    original_filename=name,
                    mime_type=mime_type,
                    declared_type="",
                    size_bytes=inner_sink.size,
                    sha256=inner_sink.sha256,
                    spool_path=inner_sink.path,
                    status="STORED",
                    reason="file inside winmail.dat",
                )
            )

    def _walk_encoded(self, info: PartInfo, sink: SpoolSink, end: LeafEnd) -> None:
        if info.depth + 1 >= self.max_depth:
            sink.discard()
            self._skip(info, Decision(Kind.NOT_DOCUMENT, f"nested deeper than {self.max_depth}"))
            return
        self._skip(
            info,
            Decision(
                Kind.CONTAINER, "attached message (transfer-encoded): decoded and walked into"
            ),
        )
        with open(sink.path, "rb") as handle:
            walker = MimeWalker(
                handle,
                self,
                max_depth=self.max_depth,
                max_header_bytes=self.max_header_bytes,
                path_prefix=info.path + ".",
                root_depth=info.depth + 1,
            )
            try:
                walker.walk()
            except UnparseableMessage as error:
                self._note_defects(info.path, [f"attached message unreadable: {error}"])
            except SourceError as error:
                raise OSError(str(error)) from error
        for path, defect in walker.defects:
            self.defects.append({"part": path, "defect": defect})
        sink.discard()


def extract_message(
    source: BinaryIO,
    spool_dir: str | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Extraction:
    """Walk and classify one message; documents end up as files in a private spool directory.

    Raises SourceError when reading the message fails and OSError when the spool cannot be
    written (both worth a retry). Content never raises: an unparseable message, or a bug met
    on strange content, comes back as `error`, with whatever was found before it.
    """
    spool = tempfile.TemporaryDirectory(prefix="orderflow-extract-", dir=spool_dir)
    extractor = _Extractor(spool.name, max_depth, max_header_bytes)
    walker = MimeWalker(source, extractor, max_depth=max_depth, max_header_bytes=max_header_bytes)
    error: dict[str, str] | None = None
    try:
        walker.walk()
    except UnparseableMessage as problem:
        error = {"error": "unparseable", "detail": str(problem)}
    except (SourceError, OSError, MemoryError):
        spool.cleanup()
        raise
    except Exception as problem:  # a bug met on strange content: record it, never crash
        error = {"error": "walker_failed", "detail": f"{type(problem).__name__}: {problem}"[:300]}
    try:
        extractor.finish()
    except (OSError, MemoryError):
        spool.cleanup()
        raise
    except Exception as problem:
        error = error or {"error": "walker_failed", "detail": f"{type(problem).__name__}"}
    for path, defect in walker.defects:
        extractor.defects.append({"part": path, "defect": defect})
    return Extraction(
        documents=extractor.documents,
        skipped=extractor.skipped,
        defects=extractor.defects,
        error=error,
        size_bytes=walker.bytes_read,
        _spool=spool,
    )
