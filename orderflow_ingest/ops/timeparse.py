"""Durations and points in time as operators type them: `15m`, `2h`, `7d`, an ISO date."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90` (seconds), `90s`, `15m`, `2h`, `7d`, `1w`."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 900, 15m, 2h, 7d)")
    unit = (match.group(2) or "s").lower()
    return timedelta(seconds=float(match.group(1)) * UNITS[unit])


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time: a duration ago (`24h`), `today`, `yesterday`, or ISO 8601.

    An ISO time without a zone is the host's local time, as an operator reading the
    host's logs means it.
    """
    now = now or datetime.now(UTC)
    lowered = text.strip().lower()
    local_now = now.astimezone()
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    if lowered == "today":
        return midnight
    if lowered == "yesterday":
        return midnight - timedelta(days=1)
    if DURATION.match(lowered):
        return now - parse_duration(lowered)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time (examples: 24h, yesterday, 2024-05-01, 2024-05-01T10:14)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive = local time
    return parsed


def human_duration(seconds: float | None) -> str:
    """`45s`, `12m 5s`, `3h 02m`, `2d 4h` — for tables, not for machines."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"
