"""Plain words for what the pages show: verdicts, event types, sizes."""

from __future__ import annotations

from typing import Any

RESULT_WORDS = {
    "pass": "passed",
    "fail": "failed",
    "softfail": "failed softly (the domain does not vouch for this server)",
    "neutral": "neutral (the domain says nothing either way)",
    "none": "not published by the sender's domain",
    "temperror": "could not be checked (a temporary DNS error)",
    "permerror": "could not be checked (the domain's record is broken)",
    "policy": "failed the domain's policy",
}
EVENT_WORDS = {
    "message.received": "Received from Postfix",
    "message.stored": "Raw message stored",
    "message.parsed": "Attachments extracted",
    "message.failed": "Processing failed",
    "message.reprocessed": "Sent back for reprocessing",
    "document.created": "Document created",
}


def _result(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "not checked"
    return RESULT_WORDS.get(str(entry.get("result", "")), str(entry.get("result", "unknown")))


def verdict_lines(verdicts: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(check, sentence) pairs for the Authentication-Results our milter wrote."""
    if not verdicts:
        return [("Authentication", "not checked: no verdict of ours on this message")]
    if verdicts.get("unparseable"):
        return [("Authentication", "our verdict header could not be read")]
    spf = verdicts.get("spf")
    lines = [
        (
            "SPF",
            f"{_result(spf)}"
            + (f" for {spf['smtp.mailfrom']}" if spf and spf.get("smtp.mailfrom") else ""),
        )
    ]
    dkim = verdicts.get("dkim") or []
    if not dkim:
        lines.append(("DKIM", "the message carried no signature"))
    for entry in dkim:
        domain = entry.get("header.d")
        lines.append(("DKIM", _result(entry) + (f" (signed by {domain})" if domain else "")))
    dmarc = verdicts.get("dmarc")
    lines.append(
        (
            "DMARC",
            _result(dmarc)
            + (f" for {dmarc['header.from']}" if dmarc and dmarc.get("header.from") else ""),
        )
    )
    return lines


def event_words(event_type: str) -> str:
    return EVENT_WORDS.get(event_type, event_type)


def size(number: int | None) -> str:
    if number is None:
        return "-"
    if number < 1024:
        return f"{number} bytes"
    if number < 1024**2:
        return f"{number / 1024:.1f} KiB"
    return f"{number / 1024**2:.1f} MiB"
