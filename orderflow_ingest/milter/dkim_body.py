"""DKIM body hashes computed while the body streams in, so no body is ever held whole.

dkimpy verifies a message given as one bytes object. A milter that buffered every body to
hand it over would hold (message size x connections) in memory, or spool each body to disk
just to read it back. Instead the body canonicalization of RFC 6376 3.4.3/3.4.4 runs here,
line by line, on each chunk libmilter passes to `body()`: one canonicalization per distinct
c= body canonicalization, feeding one hash per distinct (canonicalization, algorithm, l=) of
the message's signatures. Memory and work per chunk are bounded by a constant (64 KiB of
unfinished line, two bytes of a pending white space run, a count of trailing empty lines),
so the cost is linear in the body whatever its shape (issue 10, item 7: a body of nothing
but white space used to be kept and rescanned whole at every chunk, quadratic).
`dkim_check` then asks dkimpy to verify only the header signature and compares the body
hash itself.

Line endings are normalised the way dkimpy's own parser does (split on LF, drop a CR before
it, join with CRLF), so a body gives the same hash here as in `dkim.verify`; a property test
holds the two side by side.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Runs of white space that relaxed canonicalization changes: a lone space is already canonical,
# so it is not matched (a 10 KB body has a thousand of them).
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")
# A line that has not ended yet is kept only up to this length for canonicalization; beyond
# it, the part that can no longer change (everything but its trailing whitespace) is hashed.
_FLUSH_AT = 64 * 1024

# rsa-sha1 is refused before any hashing (RFC 8301), so it has no entry here.
HASHES = {b"rsa-sha256": "sha256", b"ed25519-sha256": "sha256"}


@dataclass(frozen=True)
class BodyHashKey:
    """What a signature's body hash depends on."""

    relaxed: bool
    algorithm: str  # hashlib name
    length: int | None  # l=, or None for the whole body


def _relax(block: bytes) -> bytes:
    """Relaxed body canonicalization of whole lines: no white space before a line end, every
    other run of it one space. Runs are compressed first, so the space left before a line end
    is a single byte and a plain replace removes it (a regex such as `[\t ]+\n` rescans a long
    run from each of its bytes: quadratic, dkimpy's own cost). Most text has neither tabs nor
    double spaces nor trailing blanks; those blocks skip the regex (a scan for a byte pair is
    far cheaper)."""
    if b"\t" in block or b"  " in block:
        block = _WSP_RUN.sub(b" ", block)
    if b" \n" in block:
        block = block.replace(b" \n", b"\n")
    return block


class _Sink:
    """One hash of the canonical body, cut at its signature's l= (None: the whole body)."""

    __slots__ = ("hash", "hashed", "limit")

    def __init__(self, key: BodyHashKey):
        self.hash = hashlib.new(key.algorithm)
        self.limit = key.length
        self.hashed = 0

    def room(self) -> int | None:
        return None if self.limit is None else self.limit - self.hashed

    def write(self, data: bytes) -> None:
        room = self.room()
        if room is not None:
            if room <= 0:
                return
            data = data[:room]
        self.hash.update(data)
        self.hashed += len(data)


class Canonicalizer:
    """One body canonicalization (simple or relaxed) fed chunk by chunk, feeding its hashes.

    Every signature with the same c= shares it: the canonical bytes are computed once and
    each signature's hash takes its l= prefix of them. Work is linear in the body: each byte
    is scanned a bounded number of times, and the unfinished line kept between chunks is
    bounded (see `_flush_partial_prefix`) however long a line, or a run of white space, is.
    """

    def __init__(self, relaxed: bool):
        self.relaxed = relaxed
        self._sinks: list[_Sink] = []
        self._partial = bytearray()  # bytes of the current, unfinished line
        self._partial_started = False  # the current line may have been hashed in part
        self._empty_lines = 0  # empty lines seen but not yet known to be non-trailing
        self._any_line = False  # something other than trailing empty lines was hashed
        self._finished = False
        self.canonical_length = 0  # bytes of canonical body emitted (before any l= cut)

    def add(self, key: BodyHashKey) -> _Sink:
        sink = _Sink(key)
        self._sinks.append(sink)
        return sink

    def _emit(self, data: bytes) -> None:
        self.canonical_length += len(data)
        for sink in self._sinks:
            sink.write(data)

    def _flush_empty_lines(self) -> None:
        if self._empty_lines:
            self._emit(b"\r\n" * self._empty_lines)
            self._empty_lines = 0

    def update(self, chunk: bytes) -> None:
        """Hash the complete lines of `chunk` (with what was left of the last one).

        Whole runs of lines are canonicalized with a few regex passes over the block rather
        than line by line: at a few hundred lines per message this is the milter's hot path.
        Only `chunk` is searched for a line end; the kept partial line has none.
        """
        if self._finished:
            raise ValueError("body hash already finished")
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            self._partial += chunk
        else:
            block = bytes(self._partial) + chunk[:end] if self._partial else chunk[:end]
            self._partial = bytearray(chunk[end:])
            self._lines(block)
        if len(self._partial) > _FLUSH_AT:
            self._flush_partial_prefix()

    def _lines(self, block: bytes) -> None:
        """Complete lines, each ending in LF (optionally CRLF)."""
        block = block.replace(b"\r\n", b"\n")  # dkimpy's parser: split on CR?LF
        if self.relaxed:
            block = _relax(block)
        content = block.rstrip(b"\n")
        trailing = len(block) - len(content)  # line ends after the last non-empty line
        if not content and not self._partial_started:
            self._empty_lines += trailing  # only empty lines: trailing until proven otherwise
            return
        # The first line is non-empty, or continues a line whose start was already hashed.
        self._flush_empty_lines()
        self._emit(content.replace(b"\n", b"\r\n") + b"\r\n")
        self._empty_lines = trailing - 1
        self._partial_started = False
        self._any_line = True

    def _flush_partial_prefix(self) -> None:
        """Hash the settled front of an overlong unfinished line, keep only its tail.

        What the line's end may still change is its last CR (the CR of a CRLF split between
        chunks) and, under relaxed, the white space run just before it (removed at a line
        end, one space otherwise). Everything before is final. A relaxed run is kept as one
        space, which canonicalizes exactly as the whole run would: so the kept tail is at most
        two bytes, however long the run (a body of nothing but spaces stays bounded).
        """
        partial = bytes(self._partial)
        stop = len(partial) - 1 if partial.endswith(b"\r") else len(partial)
        if self.relaxed:
            cut = len(partial[:stop].rstrip(b" \t"))  # the run ends at `stop`, starts at `cut`
            head = _WSP_RUN.sub(b" ", partial[:cut])
            tail = (b" " if cut < stop else b"") + partial[stop:]
        else:
            cut = stop
            head = partial[:cut]
            tail = partial[cut:]
        self._partial = bytearray(tail)
        if not head:
            return
        self._flush_empty_lines()
        self._emit(head)
        self._any_line = True
        self._partial_started = True

    def finish(self) -> None:
        """The body's last line (if unterminated), trailing empty lines dropped. Idempotent."""
        if self._finished:
            return
        self._finished = True
        tail = bytes(self._partial)
        self._partial = bytearray()
        if self.relaxed:
            tail = _WSP_RUN.sub(b" ", tail)
        if tail or self._partial_started:
            self._flush_empty_lines()
            self._emit(tail + b"\r\n")
            self._any_line = True
        if not self._any_line and not self.relaxed:
            # simple: an empty body is canonically a single CRLF (RFC 6376 3.4.3)
            self._emit(b"\r\n")


class BodyHasher:
    """One canonicalized, possibly length-limited, body hash fed chunk by chunk."""

    def __init__(self, key: BodyHashKey):
        self.key = key
        self._canon = Canonicalizer(key.relaxed)
        self._sink = self._canon.add(key)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the unfinished line held between chunks (bounded; see Canonicalizer)."""
        return len(self._canon._partial)

    def update(self, chunk: bytes) -> None:
        self._canon.update(chunk)

    def digest(self) -> bytes:
        self._canon.finish()
        return self._sink.hash.digest()


class BodyHashes:
    """The hashes one message's signatures need, fed from the milter's body callback.

    One Canonicalizer per body canonicalization (at most two), shared by every signature
    that uses it: eight signatures cost two canonicalizations and eight hash updates.
    """

    MAX_HASHERS = 8  # distinct (c=, a=, l=) combinations; more is abuse, not mail

    def __init__(self) -> None:
        self._canons: dict[bool, Canonicalizer] = {}
        self._sinks: dict[BodyHashKey, _Sink] = {}

    def want(self, key: BodyHashKey) -> bool:
        if key in self._sinks:
            return True
        if len(self._sinks) >= self.MAX_HASHERS:
            return False
        canon = self._canons.get(key.relaxed)
        if canon is None:
            canon = self._canons[key.relaxed] = Canonicalizer(key.relaxed)
        self._sinks[key] = canon.add(key)
        return True

    def update(self, chunk: bytes) -> None:
        for canon in self._canons.values():
            canon.update(chunk)

    def digest(self, key: BodyHashKey) -> bytes | None:
        sink = self._sinks.get(key)
        if sink is None:
            return None
        self._canons[key.relaxed].finish()
        return sink.hash.digest()

    def canonical_length(self, relaxed: bool) -> int | None:
        """Length of the whole canonical body (after `digest`), for comparing with l=."""
        canon = self._canons.get(relaxed)
        if canon is None:
            return None
        canon.finish()
        return canon.canonical_length


def key_for(tags: dict[bytes, bytes]) -> BodyHashKey | None:
    """The body hash a parsed DKIM-Signature asks for, or None if its tags make no sense."""
    algorithm = HASHES.get(tags.get(b"a", b"").strip().lower())
    if algorithm is None:
        return None
    canon = tags.get(b"c", b"simple/simple").strip().lower().split(b"/")
    if len(canon) not in (1, 2):
        return None
    body_canon = canon[1] if len(canon) == 2 else b"simple"
    if body_canon not in (b"simple", b"relaxed"):
        return None
    length: int | None = None
    if b"l" in tags:
        text = tags[b"l"].strip()
        if not text.isdigit() or len(text) > 76:
            return None
        length = int(text)
    return BodyHashKey(body_canon == b"relaxed", algorithm, length)
