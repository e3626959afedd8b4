"""DKIM body hashes computed while the body streams in, so no body is ever held whole.

dkimpy verifies a message given as one bytes object. A milter that buffered every body to
hand it over would hold (message size x connections) in memory, or spool each body to disk
just to read it back. Instead the body canonicalization of RFC 6376 3.4.3/3.4.4 runs here,
line by line, on each chunk libmilter passes to `body()`, feeding one hash per distinct
(canonicalization, algorithm, l=) of the message's signatures. Memory is bounded by the
longest line we are still waiting to complete plus the run of trailing empty lines (a count,
not the bytes). `dkim_check` then asks dkimpy to verify only the header signature and
compares the body hash itself.

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
_WSP_BEFORE_LF = re.compile(rb"[\t ]+\n")
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
    other run of it one space. Most text has neither tabs nor double spaces nor trailing
    blanks; those blocks skip the regexes (a scan for a byte pair is far cheaper)."""
    if b" \n" in block or b"\t\n" in block:
        block = _WSP_BEFORE_LF.sub(b"\n", block)
    if b"\t" in block or b"  " in block:
        block = _WSP_RUN.sub(b" ", block)
    return block


class BodyHasher:
    """One canonicalized, possibly length-limited, body hash fed chunk by chunk."""

    def __init__(self, key: BodyHashKey):
        self.key = key
        self._hash = hashlib.new(key.algorithm)
        self._hashed = 0
        self._partial = b""  # bytes of the current, unfinished line (after any CR strip)
        self._partial_started = False  # a relaxed partial line may have been hashed in part
        self._empty_lines = 0  # empty lines seen but not yet known to be non-trailing
        self._any_line = False  # something other than trailing empty lines was hashed

    def _emit(self, data: bytes) -> None:
        limit = self.key.length
        if limit is not None:
            room = limit - self._hashed
            if room <= 0:
                return
            data = data[:room]
        self._hash.update(data)
        self._hashed += len(data)

    def _flush_empty_lines(self) -> None:
        if self._empty_lines:
            self._emit(b"\r\n" * self._empty_lines)
            self._empty_lines = 0

    def update(self, chunk: bytes) -> None:
        """Hash the complete lines of `chunk` (with what was left of the last one).

        Whole runs of lines are canonicalized with a few regex passes over the block rather
        than line by line: at a few hundred lines per message this is the milter's hot path.
        """
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        if end == 0:
            self._partial = data
        else:
            self._partial = data[end:]
            self._lines(data[:end])
        if len(self._partial) > _FLUSH_AT:
            self._flush_partial_prefix()

    def _lines(self, block: bytes) -> None:
        """Complete lines, each ending in LF (optionally CRLF)."""
        block = block.replace(b"\r\n", b"\n")  # dkimpy's parser: split on CR?LF
        if self.key.relaxed:
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

        A trailing CR or whitespace run may still be removed or compressed once the line
        ends, so those stay; everything before them is final under both canonicalizations.
        """
        partial = self._partial
        if self.key.relaxed:
            cut = len(partial.rstrip(b" \t\r"))
            # Never split inside a whitespace run: compression depends on the whole run.
            while cut > 0 and partial[cut - 1 : cut] in (b" ", b"\t"):
                cut -= 1
            head = _WSP_RUN.sub(b" ", partial[:cut])
        else:
            cut = len(partial) - 1 if partial.endswith(b"\r") else len(partial)
            head = partial[:cut]
        if not head:
            return
        self._flush_empty_lines()
        self._emit(head)
        self._any_line = True
        self._partial_started = True
        self._partial = partial[cut:]

    def digest(self) -> bytes:
        """Finish: the body's last line (if unterminated), trailing empty lines dropped."""
        tail = self._partial
        self._partial = b""
        if self.key.relaxed:
            tail = _WSP_RUN.sub(b" ", tail)
        if tail or self._partial_started:
            self._flush_empty_lines()
            self._emit(tail + b"\r\n")
            self._any_line = True
        if not self._any_line and not self.key.relaxed:
            # simple: an empty body is canonically a single CRLF (RFC 6376 3.4.3)
            self._emit(b"\r\n")
        return self._hash.digest()


class BodyHashes:
    """The hashes one message's signatures need, fed from the milter's body callback."""

    MAX_HASHERS = 8  # distinct (c=, a=, l=) combinations; more is abuse, not mail

    def __init__(self) -> None:
        self._hashers: dict[BodyHashKey, BodyHasher] = {}
        self._digests: dict[BodyHashKey, bytes] = {}

    def want(self, key: BodyHashKey) -> bool:
        if key in self._hashers:
            return True
        if len(self._hashers) >= self.MAX_HASHERS:
            return False
        self._hashers[key] = BodyHasher(key)
        return True

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    def digest(self, key: BodyHashKey) -> bytes | None:
        if key not in self._digests:
            hasher = self._hashers.get(key)
            if hasher is None:
                return None
            self._digests[key] = hasher.digest()
        return self._digests[key]


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
