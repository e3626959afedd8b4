"""Fuzz targets: one function per parser, each asserting what must hold for ANY input.

"No exception" is not enough: each target states the parser's contract (which errors it may
raise, what its output may contain, how much it may grow) and asserts it. Run by
`run_atheris.py` (coverage-guided, atheris/libFuzzer) and replayed over the seed corpora by
tests/test_fuzz_short.py. A failing assertion here is a bug in the package, never in the input.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

from orderflow_ingest.jobs import decoders, filenames, part_inspection, walker
from orderflow_ingest.pipe import headers, protocol

# --- shared checks -----------------------------------------------------------------------------


def clean_for_storage(value: str, where: str) -> None:
    """Text that reaches PostgreSQL, JSON and S3 metadata: no NUL, no lone surrogate."""
    assert "\x00" not in value, f"NUL in {where}: {value!r}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"lone surrogate in {where}: {value!r}") from None


def all_strings(value: Any, where: str = "$") -> list[tuple[str, str]]:
    """Every string in a JSON-like value, keys included, with where it was found."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        found: list[tuple[str, str]] = []
        for key, item in value.items():
            found += all_strings(key, f"{where}.<key>")
            found += all_strings(item, f"{where}.{key}")
        return found
    if isinstance(value, (list, tuple)):
        return [
            pair
            for index, item in enumerate(value)
            for pair in all_strings(item, f"{where}[{index}]")
        ]
    return []


class Splitter:
    """Cut one fuzz input into pieces: the first bytes steer the cuts, the rest is the payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def chunks(self, payload: bytes) -> list[bytes]:
        """The payload in chunks of sizes taken from the steering bytes (1..64 each)."""
        sizes = [1 + (byte % 64) for byte in self.data[:16]] or [7]
        out: list[bytes] = []
        position = 0
        index = 0
        while position < len(payload):
            size = sizes[index % len(sizes)]
            out.append(payload[position : position + size])
            position += size
            index += 1
        return out


def uudecode_bound(encoded: bytes) -> int:
    """Most bytes a decoder may produce from `encoded`: its length, or for x-uuencode up to 45
    per line, since a uuencode line's first character declares its length and binascii pads a
    short line with NULs (a known amplification, at most 45 bytes per 2 bytes in)."""
    return len(encoded) + 45 * (encoded.count(b"\n") + 1)


# --- the MIME walker ---------------------------------------------------------------------------


class _RecordingHandler:
    """Records every walker callback and checks the protocol between them."""

    def __init__(self) -> None:
        self.decided: list[str] = []
        self.open_leaf: str | None = None
        self.written = 0

    def container(self, info: walker.PartInfo, walked: bool, reason: str) -> None:
        assert self.open_leaf is None, f"container {info.path} inside open leaf {self.open_leaf}"
        assert isinstance(reason, str) and reason
        self.decided.append(info.path)

    def leaf(self, info: walker.PartInfo) -> Any:
        assert self.open_leaf is None, f"leaf {info.path} inside open leaf {self.open_leaf}"
        self.open_leaf = info.path
        return self

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.written += len(data)

    def leaf_done(self, info: walker.PartInfo, sink: Any, end: walker.LeafEnd) -> None:
        assert self.open_leaf == info.path, (self.open_leaf, info.path)
        self.open_leaf = None
        assert end.size_encoded >= 0
        self.decided.append(info.path)


_PART_PATH = re.compile(r"^1(\.[1-9][0-9]*)*$")


def walker_target(data: bytes) -> None:
    """The walker raises only UnparseableMessage; every entity gets exactly one decision; the
    decoded output never outgrows the input; the buffer it holds stays bounded."""
    handler = _RecordingHandler()
    walk = walker.MimeWalker(io.BytesIO(data), handler, max_depth=8, max_header_bytes=4096)
    peak = 0
    original_fill = walk._fill

    def fill() -> bool:
        nonlocal peak
        result = original_fill()
        peak = max(peak, len(walk._buf))
        return result

    walk._fill = fill  # type: ignore[method-assign]
    try:
        walk.walk()
    except walker.UnparseableMessage:
        # Documented: an empty message, or a root header block beyond the limit.
        assert not data or len(data) > 4096, "UnparseableMessage for a small message"
        return
    assert handler.open_leaf is None, "a leaf was never finished"
    assert len(handler.decided) == len(set(handler.decided)), f"decided twice: {handler.decided}"
    assert len(handler.decided) == walk.parts, (len(handler.decided), walk.parts)
    for path in handler.decided:
        assert _PART_PATH.match(path), f"malformed part path {path!r}"
    # base64 and quoted-printable only shrink, identity keeps the size; uuencode may pad a
    # short line up to its declared length (see uudecode_bound).
    assert handler.written <= uudecode_bound(data), (handler.written, len(data))
    assert walk.bytes_read == len(data)
    # Bounded memory: the buffer never holds more than a chunk plus one held-back line.
    assert peak <= walker.CHUNK + walker.MAX_LINE + 2, peak
    for path, text in walk.defects:
        assert isinstance(text, str) and _PART_PATH.match(path)


# --- the transfer decoders ---------------------------------------------------------------------

_ENCODINGS = ("base64", "quoted-printable", "x-uuencode", "7bit", "binary", "x-unknown")


def _decode(encoding: str, chunks: list[bytes]) -> tuple[bytes, decoders.Decoder]:
    decoder, _unknown = decoders.make_decoder(encoding)
    out = b"".join(decoder.feed(chunk) for chunk in chunks) + decoder.finish()
    return out, decoder


def decoders_target(data: bytes) -> None:
    """Chunking never changes the result; output never outgrows input; valid encodings round-trip
    exactly and report no defect."""
    if not data:
        return
    encoding = _ENCODINGS[data[0] % len(_ENCODINGS)]
    steer, payload = data[1:9], data[9:]
    whole, whole_decoder = _decode(encoding, [payload])
    pieces, piece_decoder = _decode(encoding, Splitter(steer).chunks(payload))
    assert whole == pieces, f"{encoding}: chunking changed the output"
    assert whole_decoder.corrupt == piece_decoder.corrupt
    assert (
        len(whole) <= uudecode_bound(payload)
        if encoding == "x-uuencode"
        else len(whole) <= len(payload)
    ), (encoding, len(whole), len(payload))
    for text in whole_decoder.defects:
        assert isinstance(text, str)
    # Round trips: what a correct mailer writes comes back byte for byte.
    encoded_b64 = base64.encodebytes(payload)
    out, decoder = _decode("base64", Splitter(steer).chunks(encoded_b64))
    assert out == payload, "base64 round trip"
    assert not decoder.corrupt and not decoder.defects, decoder.defects
    encoded_qp = binascii.b2a_qp(payload, istext=False)  # line breaks as =0D=0A: exact
    out, decoder = _decode("quoted-printable", Splitter(steer).chunks(encoded_qp))
    assert out == payload, "quoted-printable round trip"
    assert not decoder.corrupt


# --- filename decoding -------------------------------------------------------------------------


def _check_safe_name(name: str | None, raw: str) -> None:
    if name is None:
        return
    clean_for_storage(name, f"sanitise({raw[:80]!r})")
    assert name, "empty name instead of None"
    assert "/" not in name and "\\" not in name, f"path separator in {name!r}"
    assert name not in (".", ".."), name
    assert not any(ord(ch) < 0x20 or ch == "\x7f" for ch in name), f"control char in {name!r}"
    assert len(name.encode("utf-8")) <= filenames.MAX_NAME_BYTES, name
    assert filenames.sanitise(name) == name, f"sanitise is not idempotent on {name!r}"


def filenames_target(data: bytes) -> None:
    """Parameter parsing never raises; every name `sanitise` lets through is storable and safe
    (no NUL, surrogate, control character or path separator, bounded length)."""
    text = data.decode("utf-8", "surrogateescape")
    token, params, defects = filenames.parse_header_params(text)
    assert isinstance(token, str) and all(isinstance(d, str) for d in defects)
    for key, value in params.items():
        assert isinstance(key, str) and isinstance(value, str)
        _check_safe_name(filenames.sanitise(value), value)
    for candidate in (
        filenames.decode_rfc2047(text),
        filenames.decode_rfc2231(text),
        filenames.decode_header_text(text),
        text,
    ):
        assert isinstance(candidate, str)
        _check_safe_name(filenames.sanitise(candidate), candidate)
    decoded, _clean = filenames.decode_bytes(data, params.get("charset"))
    assert isinstance(decoded, str)


# --- header facts ------------------------------------------------------------------------------


def header_facts_target(data: bytes) -> None:
    """read_header_facts raises only MalformedHeaders; every fact is storable text; the
    Message-ID is bounded and a stable function of the block."""
    block = headers.split_header_block(data)
    if block is None:
        block = data + b"\n\n"
    try:
        facts = headers.read_header_facts(block)
    except headers.MalformedHeaders:
        return
    for name in ("message_id", "from_email", "to_email", "subject"):
        value = getattr(facts, name)
        if value is not None:
            assert isinstance(value, str), name
            clean_for_storage(value, name)
    for value in facts.authentication_results:
        clean_for_storage(value, "authentication_results")
    assert facts.message_id, "empty Message-ID"
    assert len(facts.message_id) <= headers.MAX_MESSAGE_ID, len(facts.message_id)
    if facts.from_email is not None:
        assert len(facts.from_email) <= 320
    assert headers.read_header_facts(block) == facts, "not deterministic"


# --- the deliver <-> service wire format -------------------------------------------------------

_CANONICAL = re.compile(rb"^(0|[1-9][0-9]*)$")
_WIRE_MAX = 64 * 1024


def _reference_decode(data: bytes) -> tuple[tuple[str, str, str], bytes] | None:
    """An independent, strict reading of the OFI2 format (protocol.py's docstring): what a
    correct parser must accept, and nothing else. None means "must be refused"."""
    import hashlib

    def length(line: bytes, limit: int) -> int | None:
        if not _CANONICAL.match(line) or len(line) > 6:
            return None
        value = int(line)
        return value if value <= limit else None

    head, newline, rest = data.partition(b"\n")
    size = length(head, protocol.MAX_ENVELOPE) if newline else None
    if size is None or len(rest) < size:
        return None
    fields = rest[:size].decode("utf-8", "surrogateescape").split("\0")
    if len(fields) != 4 or fields[0] != protocol.VERSION:
        return None
    rest = rest[size:]
    message = b""
    while True:
        line, newline, rest = rest.partition(b"\n")
        if not newline:
            return None
        if line.startswith(b"0"):
            parts = line.split(b" ")
            if len(parts) != 3 or parts[0] != b"0" or rest:
                return None
            digest, count = parts[1], parts[2]
            if not re.fullmatch(rb"[0-9a-f]{64}", digest) or not _CANONICAL.match(count):
                return None
            if int(count) != len(message) or digest.decode() != hashlib.sha256(message).hexdigest():
                return None
            return (fields[1], fields[2], fields[3]), message
        chunk = length(line, protocol.CHUNK)
        if not chunk or len(rest) < chunk or len(message) + chunk > _WIRE_MAX:
            return None
        message += rest[:chunk]
        rest = rest[chunk:]


def _wire_stream(data: bytes, chunks: list[bytes]) -> Any:
    """Feed the service's decoder `chunks`; (envelope, message) or "refused"."""
    decoder = protocol.Decoder(_WIRE_MAX)
    pieces: list[bytes] = []
    try:
        for chunk in chunks:
            pieces += decoder.feed(chunk)
        decoder.finish()
    except protocol.WireError:
        return "refused"
    envelope = decoder.envelope
    return (envelope.sender, envelope.recipient, envelope.queue_id), b"".join(pieces)


def wire_target(data: bytes) -> None:
    """The service's parser agrees with a strict reference reading on every input (so it never
    accepts a non-canonical length, a short or corrupted message, or bytes after the trailer),
    raises nothing but WireError, and answers the same however the bytes are split into reads.
    A correctly framed message round-trips; any prefix of it is refused."""
    whole = _wire_stream(data, [data])
    assert whole == _wire_stream(data, Splitter(data[:16]).chunks(data)), "split reads differ"
    expected = _reference_decode(data)
    assert whole == (expected if expected is not None else "refused"), (whole, expected)
    # A well-formed delivery of the same bytes: accepted whole, refused when cut anywhere.
    framed = protocol.encode("buyer@customer.example", "orders@acme.example", "4QX1", data)
    envelope, message = _wire_stream(framed, Splitter(data[:16]).chunks(framed))
    assert message == data and envelope[2] == "4QX1"
    for cut in {len(framed) - 1, len(framed) // 2, len(framed) - 70, 3}:
        if 0 <= cut < len(framed):
            assert _wire_stream(framed, [framed[:cut]]) == "refused", f"prefix of {cut} accepted"


# --- inspect (the worker's classification path) ------------------------------------------------


def inspect_target(data: bytes) -> None:
    """Any bytes give a result, never a bug report; every part is decided once; everything it
    would store is storable text; no spool file outlives the extraction."""
    with tempfile.TemporaryDirectory(prefix="fuzz-inspect-") as spool_dir:
        from orderflow_ingest.jobs.extract import extract_message

        extraction = extract_message(io.BytesIO(data), spool_dir=spool_dir, max_depth=8)
        try:
            result = extraction.as_json()
            if result["error"] is not None:
                assert result["error"]["error"] == "unparseable", result["error"]
            for where, text in all_strings(result):
                clean_for_storage(text, where)
            json.dumps(result, ensure_ascii=False).encode("utf-8")
            parts = [d["part"] for d in result["documents"]] + [
                s["part"] for s in result["skipped"]
            ]
            assert len(parts) == len(set(parts)), f"a part decided twice: {sorted(parts)}"
            for document in result["documents"]:
                _check_safe_name(document["filename"], document["original_filename"] or "")
                assert re.fullmatch(r"[0-9a-f]{64}", document["sha256"])
                assert document["status"] in ("STORED", "FAILED")
            for document in extraction.documents:
                assert os.path.getsize(document.spool_path) == document.size_bytes
        finally:
            extraction.close()
        assert os.listdir(spool_dir) == [], "spool files left behind"
    # inspect's own promise: a result for any input, and a text rendering of it.
    rendered = part_inspection.inspect_stream(io.BytesIO(data), max_depth=8)
    assert "error" in rendered
    part_inspection.render_text(rendered)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "walker": walker_target,
    "decoders": decoders_target,
    "filenames": filenames_target,
    "header_facts": header_facts_target,
    "wire": wire_target,
    "inspect": inspect_target,
}
