"""Structured logs: one JSON line per event, with whatever identifiers are known by then.

Every component logs through `log_event`, so one grep on a trace_id, Message-ID, Postfix queue
id or inbound_message id follows a message from SMTP to its documents (spec RE-004).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "orderflow"
_logger = logging.getLogger(LOGGER_NAME)
# A lone surrogate (an undecodable byte kept by surrogateescape, a broken encoded word) cannot
# be written as UTF-8: the handler would drop the whole line. It is written as its JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class JsonLineFormatter(logging.Formatter):
    """One JSON line per record, valid UTF-8 whatever the fields hold: a hostile Subject or
    filename (NUL, lone surrogates, objects that do not serialise) never loses the line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": getattr(record, "component", record.name),
            "event": _message(record),
        }
        fields = getattr(record, "fields", {})
        line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            text = json.dumps(line, default=_text, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            # Keys that are not strings, circular values: keep the line, fields as text.
            line = {key: value for key, value in line.items() if key not in fields}
            line["fields"] = _text(fields)
            text = json.dumps(line, default=_text, ensure_ascii=False)
        return _escape_surrogates(text)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a library's bad %-format arguments: keep the template
        return _text(record.msg)


def _text(value: object) -> str:
    """str() for JSON, never raising (an object whose __str__ fails is still logged)."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def setup_logging(level: str = "INFO", path: str = "", component: str = "orderflow") -> None:
    """Send our events to `path` (reopened when logrotate moves it) or to standard error."""
    handler: logging.Handler
    if path:
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    _logger.handlers[:] = [handler]
    _logger.setLevel(level)
    _logger.propagate = False
    # Libraries (psycopg.pool, botocore, redis, rq) log through the root logger: their
    # warnings become JSON lines in the same place, never plain text via logging.lastResort.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    _Component.name = component


class _Component:
    name = "orderflow"


def log_event(event: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    """Log `event` with identifier fields; None values are left out."""
    if not _logger.isEnabledFor(level):
        return
    clean = {key: value for key, value in fields.items() if value is not None}
    _logger.log(
        level,
        event,
        exc_info=exc_info,
        extra={"fields": clean, "component": _Component.name},
    )


def reopen_logs() -> None:
    """SIGHUP handler body: reopen a log file that logrotate moved away."""
    for handler in _logger.handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()
