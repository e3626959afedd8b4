"""Waiting helpers shared by the stack tests: poll a condition until true or a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.1
) -> Any:
    """Poll `check` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> float | None:
    """Seconds until `check` held, or None when it never did within `timeout` (no raise:
    the reliability suite reports how long a drain took, or that it did not finish)."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(interval)
