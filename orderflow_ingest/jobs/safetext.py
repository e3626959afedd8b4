"""Text that PostgreSQL, JSON and S3 accept, whatever a sender's headers decoded to.

Filenames and reasons come from hostile headers: RFC 2231/2047 decoding can produce NUL
(`%00`), lone surrogates (`utf-7` `+2AA-`, `unicode_escape`), and the stdlib keeps raw 8-bit
bytes as surrogate escapes. PostgreSQL refuses NUL in text and jsonb, a lone surrogate cannot be
encoded as UTF-8 at all, and either one in one part used to fail every document of the message.
Everything the extraction job writes passes through here first; the replacement is U+FFFD, so
an audit still sees that something was there.
"""

from __future__ import annotations

from typing import Any

from orderflow_ingest.headertext import REPLACEMENT
from orderflow_ingest.headertext import clean as _storable

__all__ = ["MAX_TEXT", "REPLACEMENT", "clean", "clean_json", "clean_optional"]
# Longest original (unsanitised) filename kept for audit; a header may be a megabyte long.
MAX_TEXT = 1024


def clean(value: str, limit: int | None = MAX_TEXT) -> str:
    """`value` with NUL and lone surrogates replaced, cut to `limit` characters (None: uncut)."""
    if limit is not None and len(value) > limit:
        value = value[:limit] + "…"
    return _storable(value)


def clean_optional(value: str | None, limit: int | None = MAX_TEXT) -> str | None:
    return None if value is None else clean(value, limit)


def clean_json(value: Any, limit: int = MAX_TEXT) -> Any:
    """A JSON-able structure with every string (keys too) cleaned."""
    if isinstance(value, str):
        return clean(value, limit)
    if isinstance(value, dict):
        return {clean(str(key), limit): clean_json(item, limit) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(item, limit) for item in value]
    return value
