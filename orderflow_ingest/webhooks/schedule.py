"""When to try a webhook again: the retry schedule with jitter, and a receiver's Retry-After.

The default schedule (ORDERFLOW_WEBHOOK_RETRY_SCHEDULE) is the Standard Webhooks example:
immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h — about three days
in all. Jitter spreads retries so a receiver that failed under load is not hit by every
delivery at the same second when it returns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_delay(
    failed_attempts: int,
    schedule: Sequence[float],
    jitter: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after `failed_attempts` failures; None when exhausted."""
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    delay = schedule[failed_attempts - 1]
    if jitter > 0:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent
    or unreadable. A date in the past is 0."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def next_delay(
    failed_attempts: int,
    schedule: Sequence[float],
    jitter: float,
    retry_after: float | None,
    retry_after_max: float,
    rng: random.Random | None = None,
) -> float | None:
    """The schedule's delay, stretched to what Retry-After asks (capped at retry_after_max).

    None when the schedule is exhausted: a receiver cannot keep a delivery alive forever by
    answering Retry-After.
    """
    delay = retry_delay(failed_attempts, schedule, jitter, rng)
    if delay is None:
        return None
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_max))
    return delay
