"""Text from mail made safe for an operator's terminal.

A Subject, Message-ID or filename is chosen by whoever sent the mail. Printed as is, an ESC
or CSI sequence can clear the screen, rewrite earlier lines or set the window title, a
newline can forge a line of `show` output, and bidirectional controls reorder what is read.
Every such character is shown as a visible escape (\\x1b, \\u202e) instead.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (tab and newline included: fields are one line each), DEL, C1 controls (0x9b is
# CSI, 0x9d OSC), zero-width and bidirectional formatting, BOM, line/paragraph separators,
# and lone surrogates (undecodable bytes; they cannot even be encoded for output).
_BEYOND_C0 = "\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
# In JSON text json.dumps has escaped C0 inside strings; the rest are its own newlines.
_UNSAFE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal could act on written as an escape."""
    return _UNSAFE.sub(_escape, text)


def safe_data(value: Any) -> Any:
    """A copy of nested dicts/lists with every string (keys too) made terminal-safe."""
    if isinstance(value, str):
        return terminal_safe(value)
    if isinstance(value, dict):
        return {safe_data(key): safe_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_data(item) for item in value]
    return value


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def safe_json(text: str) -> str:
    """JSON text with the same characters as \\uXXXX escapes: the values read back exactly.

    json.dumps(ensure_ascii=False) escapes C0 controls but writes C1 controls, bidi controls
    and lone surrogates as they are.
    """
    return _UNSAFE_IN_JSON.sub(_json_escape, text)
