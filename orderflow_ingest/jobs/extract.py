"""One message in, its documents (spooled, hashed, typed) and a reason for every other part out.

This is the classification `inspect` prints and the RQ job stores: the walker streams the
message, `classify` decides each part, documents are decoded into spool files in a private
temporary directory (sha256, size and the first bytes for type sniffing computed on the way),
winmail.dat is unpacked (in a child under limits), base64-encoded attached messages are
decoded and walked, and images are settled once every HTML body has been read. A message yields
at most `max_documents` documents: parts beyond are recorded as skipped, the raw keeps them.
No backend is touched here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from orderflow_ingest.jobs import file_types, filenames, safetext, sandbox, tnef
from orderflow_ingest.jobs.classify import (
    Decision,
    Kind,
    References,
    ReferenceScanner,
    classify_container,
    classify_leaf,
    decide_image,
    referenced_image,
)
from orderflow_ingest.jobs.spool import SpoolSink
from orderflow_ingest.jobs.walker import (
    LeafEnd,
    MimeWalker,
    PartInfo,
    Sink,
    SourceError,
    UnparseableMessage,
)
from orderflow_ingest.settings import SETTINGS

DEFAULT_MAX_DEPTH = 20
DEFAULT_MAX_HEADER_BYTES = 1024 * 1024
DEFAULT_MAX_DOCUMENTS = int(
    next(s.default for s in SETTINGS if s.name == "ORDERFLOW_MAX_DOCUMENTS_PER_MESSAGE") or 0
)

__all__ = ["Document", "Extraction", "Skipped", "SpoolSink", "extract_message"]


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
    over_cap: int = 0  # documents not extracted: beyond max_documents

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
            "over_cap": self.over_cap,
        }


def _path_key(path: str) -> tuple[int, ...]:
    return tuple(int(piece) if piece.isdigit() else 0 for piece in path.split("."))


class _Extractor:
    """The walker's handler: classifies, spools and records."""

    def __init__(
        self, spool_dir: str, max_depth: int, max_header_bytes: int, max_documents: int
    ) -> None:
        self.spool_dir = spool_dir
        self.max_depth = max_depth
        self.max_header_bytes = max_header_bytes
        self.max_documents = max_documents
        self.over_cap = 0
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
        if decision.kind is Kind.CANDIDATE_IMAGE:
            # Referenced by a body already walked: settled now, never spooled.
            decision = referenced_image(info, self.references) or decision
        if (
            decision.captures
            and decision.kind is not Kind.ENCODED_MESSAGE
            and len(self.documents) >= self.max_documents
        ):
            decision = self._cap_decision()
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
            # Held until the end of the walk (its bytes are on disk): keep what deciding and
            # naming it need, not its header parameters, so waiting images stay small.
            info.params, info.disposition_params = {}, {}
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
        """Settle the images now that every HTML body has been scanned, then apply the cap:
        the first `max_documents` in part order are documents, the rest are skipped."""
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
        for document in self.documents[self.max_documents :]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(document.spool_path)
            self._skip_over_cap(document.part, document.declared_type)
        del self.documents[self.max_documents :]
        self.skipped.sort(key=lambda skipped: _path_key(skipped.part))

    def _cap_decision(self) -> Decision:
        self.over_cap += 1
        return Decision(
            Kind.SKIPPED,
            f"over the cap of {self.max_documents} documents per message "
            "(ORDERFLOW_MAX_DOCUMENTS_PER_MESSAGE): not extracted; the raw message keeps it",
        )

    def _skip_over_cap(self, path: str, content_type: str) -> None:
        self.skipped.append(
            Skipped(path, content_type, Kind.SKIPPED.value, self._cap_decision().reason)
        )

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

    def _add_document(
        self, info: PartInfo, sink: SpoolSink, end: LeafEnd, reason: str, failed: bool = False
    ) -> None:
        original = safetext.clean_optional(info.filename or end.uuencode_name, limit=None)
        declared = "" if info.type_defaulted else info.content_type
        safe = filenames.sanitise(original)
        mime_type = file_types.refine(declared, safe or original, sink.head)
        status = "FAILED" if failed else "STORED"
        defects = list(info.defects) + list(end.defects)
        if end.truncated or end.corrupt:
            status = "FAILED"
            reason += "; corrupt: " + ("truncated" if end.truncated else "; ".join(end.defects))
        self.documents.append(
            Document(
                part=info.path,
                filename=safe or filenames.fallback_name(info.path, mime_type),
                original_filename=safetext.clean_optional(original),
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

    def _unpack_tnef(self, info: PartInfo, sink: SpoolSink, end: LeafEnd) -> None:
        if end.truncated or end.corrupt:
            # tnefparse reads a cut blob without complaint and returns cut files.
            self._add_document(info, sink, end, "winmail.dat damaged: stored as it is")
            return
        room = max(self.max_documents - len(self.documents), 0)
        prefix = f"tnef-{info.path}-"
        try:
            unpacked = tnef.unpack_file(sink.path, sink.size, self.spool_dir, prefix, room)
        except tnef.TnefError as error:
            reason = f"winmail.dat could not be unpacked ({error}): stored as it is"
            self._add_document(info, sink, end, reason)
            return
        except sandbox.LimitExceeded as error:
            # A content failure, not a fault of ours: stored, recorded, never retried.
            reason = f"winmail.dat not unpacked: {error}; stored as it is"
            self._add_document(info, sink, end, reason, failed=True)
            return
        sink.discard()
        if not unpacked.total:
            self._skip(info, Decision(Kind.TNEF, "winmail.dat holds no files (message body only)"))
            return
        reason = f"winmail.dat unpacked: {unpacked.total} file(s) inside"
        beyond = unpacked.total - len(unpacked.files)
        if beyond:
            reason += f"; {beyond} over the cap of {self.max_documents} documents not extracted"
            self.over_cap += beyond - len(unpacked.over_cap)  # counted, not listed
        self._skip(info, Decision(Kind.TNEF, reason))
        for inner in unpacked.files:
            path = f"{info.path}.{inner.index_path}"
            original = safetext.clean_optional(inner.name, limit=None)
            safe = filenames.sanitise(original)
            mime_type = file_types.refine("", safe, inner.head)
            assert inner.spool_path is not None
            self.documents.append(
                Document(
                    part=path,
                    filename=safe or filenames.fallback_name(path, mime_type),
                    original_filename=safetext.clean_optional(original),
                    mime_type=mime_type,
                    declared_type="",
                    size_bytes=inner.size,
                    sha256=inner.sha256,
                    spool_path=inner.spool_path,
                    status="STORED",
                    reason="file inside winmail.dat",
                )
            )
        for inner in unpacked.over_cap:
            self._skip_over_cap(f"{info.path}.{inner.index_path}", "")

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
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
) -> Extraction:
    """Walk and classify one message; documents end up as files in a private spool directory.

    Raises SourceError when reading the message fails and OSError when the spool cannot be
    written (both worth a retry). Content never raises: an unparseable message, or a bug met
    on strange content, comes back as `error`, with whatever was found before it.
    """
    spool = tempfile.TemporaryDirectory(prefix="orderflow-extract-", dir=spool_dir)
    extractor = _Extractor(spool.name, max_depth, max_header_bytes, max_documents)
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
        if _is_job_timeout(problem):
            spool.cleanup()  # RQ's timeout is no content problem: the job fails and is retried
            raise
        error = {"error": "walker_failed", "detail": f"{type(problem).__name__}: {problem}"[:300]}
    try:
        extractor.finish()
    except (OSError, MemoryError):
        spool.cleanup()
        raise
    except Exception as problem:
        if _is_job_timeout(problem):
            spool.cleanup()
            raise
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
        over_cap=extractor.over_cap,
    )


def _is_job_timeout(error: Exception) -> bool:
    """RQ's job timeout (raised by its SIGALRM handler), recognised without importing rq:
    `inspect` loads no backend client."""
    return any(
        cls.__module__.startswith("rq.") and cls.__name__.endswith("TimeoutException")
        for cls in type(error).__mro__
    )
