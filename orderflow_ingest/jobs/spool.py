"""A spool file for one decoded part: sha256, size and the first bytes computed on the way.

Closed as soon as its part is written (`close`), so a message with a thousand documents holds
no more than one file open at a time; the bytes are read again only to upload them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from orderflow_ingest.jobs import file_types


class SpoolSink:
    """Decoded bytes to a file, with sha256, size and the first bytes on the way."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), when the part ends
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, data: bytes) -> None:
        if len(self.head) < file_types.HEAD_BYTES:
            self.head += data[: file_types.HEAD_BYTES - len(self.head)]
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
