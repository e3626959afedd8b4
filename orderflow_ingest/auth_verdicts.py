"""Our Authentication-Results header (RFC 8601): who claims to be us, and what we said.

Shared by the milter, which removes every header that claims our authserv-id before adding
its own, and by the delivery service, which turns that one header into the
inbound_message.auth_results JSON. Both use `authserv_id_of`, so "claims to be us" means the
same thing on both sides: a header the milter let through is never read as ours, and a
header read as ours can only be the milter's.

Pure: standard library and authres only. The header our milter writes has a fixed, simple
shape and is read by `_parse_plain`, a tenth of authres's cost on the delivery path; anything
else that claims our id (a comment, a version, another grammar) goes to authres.
"""

from __future__ import annotations

import re
from typing import Any

import authres
import authres.dmarc

_FEATURES = authres.FeatureContext(authres.dmarc)
_FOLD = re.compile(r"\r?\n")
_TOKEN_END = re.compile(r'[\s;()"]')
# Results we report once per message; any other method is a list (dkim: one per signature).
SINGLE_METHODS = ("spf", "dmarc")
# One result as our milter writes it: method=result, then key=value items, each value a token
# or a quoted string (RFC 8601 2.2; no comments, no method version).
_PLAIN_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s;()"]+)'
_PLAIN_RESULT = re.compile(
    rf"\s*([A-Za-z0-9_-]+)=([A-Za-z0-9_-]+)((?:\s+[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_.-]+)?={_PLAIN_VALUE})*)\s*(?:;|\Z)"
)
_PLAIN_ITEM = re.compile(rf"([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_.-]+))?=({_PLAIN_VALUE})")
_QUOTED_PAIR = re.compile(r"\\(.)")


def normalise_authserv_id(value: str) -> str:
    return value.strip().rstrip(".").lower()


def _skip_cfws(text: str, pos: int) -> int:
    """Skip folding white space and (nested, escaped) comments."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if depth:
            if char == "\\":
                pos += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        elif char == "(":
            depth = 1
        elif not char.isspace():
            break
        pos += 1
    return pos


def authserv_id_of(value: str) -> str | None:
    """The authserv-id a header value claims, normalised; None if it names none.

    Deliberately lenient: a forger must not escape removal by making the rest of the header
    unparseable, so only the leading authserv-id is read (a token or quoted string after any
    comments and white space).
    """
    text = _FOLD.sub("", value)
    pos = _skip_cfws(text, 0)
    if pos >= len(text):
        return None
    if text[pos] == '"':
        chars: list[str] = []
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            chars.append(text[pos])
            pos += 1
        ident = "".join(chars)
    else:
        end = _TOKEN_END.search(text, pos)
        ident = text[pos : end.start() if end else len(text)]
    ident = normalise_authserv_id(ident)
    return ident or None


def claims(value: str, authserv_id: str) -> bool:
    """True when the header value claims to come from `authserv_id` (case-insensitive)."""
    return authserv_id_of(value) == normalise_authserv_id(authserv_id)


def _result_dict(result: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"result": str(result.result).lower()}
    if getattr(result, "reason", None):
        entry["reason"] = str(result.reason)
    for prop in getattr(result, "properties", []) or []:
        if prop.value is not None:
            entry.setdefault(f"{prop.type}.{prop.name}", str(prop.value))
    return entry


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def _parse_plain(results: str) -> list[tuple[str, dict[str, Any]]] | None:
    """(method, entry) pairs of the results after the authserv-id, or None when the text
    is not in the plain shape (then authres reads it). Entries are as `_result_dict` makes
    them, except that a quoted property value is kept (authres drops it, e.g. a header.b
    with "+" or "/")."""
    parsed: list[tuple[str, dict[str, Any]]] = []
    pos = 0
    while pos < len(results):
        match = _PLAIN_RESULT.match(results, pos)
        if match is None or match.end() == pos:
            return None
        method, result, items = match.groups()
        entry: dict[str, Any] = {"result": result.lower()}
        for ptype, name, value in _PLAIN_ITEM.findall(items):
            ptype = ptype.lower()
            if not name:
                if ptype != "reason":
                    return None
                if value not in ('""', ""):
                    entry.setdefault("reason", _unquote(value))
                continue
            entry.setdefault(f"{ptype}.{name.lower()}", _unquote(value))
        parsed.append((method.lower(), entry))
        pos = match.end()
    return parsed


def _parse_with_authres(value: str) -> list[tuple[str, dict[str, Any]]]:
    header = _FEATURES.parse_value(value)
    return [(str(result.method).lower(), _result_dict(result)) for result in header.results]


def _results_text(value: str, authserv_id: str) -> str | None:
    """What follows `authserv_id;` when the value starts with exactly that (our shape)."""
    head, semicolon, rest = value.partition(";")
    if semicolon and head.strip().rstrip(".").lower() == authserv_id:
        return rest
    return None


def parse_our_verdicts(header_values: list[str], authserv_id: str) -> dict[str, Any] | None:
    """The verdicts of the topmost Authentication-Results header with our authserv-id.

    `header_values` are the values of every Authentication-Results header, in message order
    (folded or not). Returns None when no header claims our authserv-id (the milter was not
    in the path), else for example::

        {"authserv_id": "mx.example.com",
         "spf": {"result": "pass", "smtp.mailfrom": "a@example.org"},
         "dkim": [{"result": "pass", "header.d": "example.org", "header.s": "sel"}],
         "dmarc": {"result": "pass", "header.from": "example.org", "policy.dmarc": "none"}}

    spf and dmarc are None when absent, dkim is [] when the message carried no signature;
    other methods appear as lists under their own names. A header claiming our id that
    cannot be parsed yields {"authserv_id": ..., "unparseable": True}.
    """
    ours = normalise_authserv_id(authserv_id)
    for value in header_values:
        if authserv_id_of(value) != ours:
            continue
        verdicts: dict[str, Any] = {"authserv_id": ours, "spf": None, "dkim": [], "dmarc": None}
        text = _FOLD.sub("", value)
        rest = _results_text(text, ours)
        parsed = _parse_plain(rest) if rest is not None and rest.strip() != "none" else None
        if parsed is None:
            try:
                parsed = _parse_with_authres(text)
            except Exception:
                verdicts["unparseable"] = True
                return verdicts
        for method, entry in parsed:
            if method in SINGLE_METHODS:
                if verdicts.get(method) is None:
                    verdicts[method] = entry
            else:
                verdicts.setdefault(method, []).append(entry)
        return verdicts
    return None
