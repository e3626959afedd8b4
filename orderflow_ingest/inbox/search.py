"""The inbox's search language, parsed into the API's MessageFilter (the one query path).

    from:acme.example  to:orders  subject:"PO 42"  message-id:<x@y>  status:parsed
    has:document  filename:PO-1.pdf  after:2026-11-01  before:2026-12-01
    larger:100k  smaller:5M  "a quoted phrase"  word  -negated:term

Every term must hold; a bare word or phrase matches the subject or the sender. Errors say
which term is wrong and why, for the page to show next to the box.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from orderflow_ingest.api.message_queries import MessageFilter, SearchTerm
from orderflow_ingest.ops import queries

STATUSES = tuple(status.lower() for status in queries.STATUSES)  # status:parsed
TEXT_FIELDS = ("from", "to", "subject", "message-id", "filename")
MAX_QUERY = 500
MAX_TERMS = 12
SIZE = re.compile(r"^(\d+)([kmg]?)b?$")
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
TOKEN = re.compile(r'\s*(-?)(?:([a-z-]+):)?("([^"]*)"?|[^\s"]+|)', re.IGNORECASE)


class SearchError(ValueError):
    """A query the inbox cannot run; the message says which term and why."""


def _date(field: str, text: str) -> datetime:
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise SearchError(f"{field}: wants a date as YYYY-MM-DD, not {text!r}") from None
    return day.replace(tzinfo=UTC)


def _size(field: str, text: str) -> int:
    match = SIZE.match(text.lower())
    if match is None:
        raise SearchError(f"{field}: wants a size such as 500, 20k or 5M, not {text!r}")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def _term(field: str, value: str, negate: bool) -> SearchTerm:
    if field == "has":
        if value.lower() not in ("document", "documents"):
            raise SearchError(f"has: knows only has:document, not has:{value}")
        return SearchTerm("has:document", None, negate)
    if not value:
        raise SearchError(f"{field}: needs a value, as in {field}:something")
    if field in TEXT_FIELDS:
        return SearchTerm(field, value, negate)
    if field == "status":
        if value.lower() not in STATUSES:
            raise SearchError(f"status: is one of {', '.join(STATUSES)}, not {value!r}")
        return SearchTerm("status", value.upper(), negate)
    if field in ("after", "before"):
        return SearchTerm(field, _date(field, value), negate)
    if field in ("larger", "smaller"):
        return SearchTerm(field, _size(field, value), negate)
    raise SearchError(
        f"unknown filter {field}: (known: from to subject message-id status has:document"
        " filename after before larger smaller)"
    )


def parse(query: str) -> MessageFilter:
    """The filter a query means; SearchError when it has a mistake."""
    if len(query) > MAX_QUERY:
        raise SearchError(f"the query is longer than {MAX_QUERY} characters")
    terms: list[SearchTerm] = []
    position = 0
    text = query.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise SearchError(f"cannot read the query from {text[position:][:30]!r}")
        position = match.end()
        negate, field, raw, quoted = match.group(1) == "-", match.group(2), match.group(3), None
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                raise SearchError('a quoted phrase is not closed: add the ending "')
            quoted = match.group(4)
        value: Any = quoted if quoted is not None else raw
        if field is None:
            if not value:
                if negate:
                    raise SearchError("a lone - negates nothing: write -word or -from:x")
                continue
            terms.append(SearchTerm("text", value, negate))
        else:
            terms.append(_term(field.lower(), value, negate))
        if len(terms) > MAX_TERMS:
            raise SearchError(f"at most {MAX_TERMS} terms")
    return MessageFilter(terms=tuple(terms))
