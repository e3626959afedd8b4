"""CPU seconds of a baseline in a forked child that may never finish: the code from before a
fix is often quadratic, so the child is killed after a timeout and the bench goes on."""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run(work: Callable[[], object], out: Any) -> None:
    started = cpu_seconds()
    work()
    out.put(cpu_seconds() - started)


def cpu_in_child(work: Callable[[], object], timeout: float) -> float | None:
    """`work`'s CPU seconds, run in a forked child; None when it ran past `timeout`."""
    context = multiprocessing.get_context("fork")
    out = context.SimpleQueue()
    child = context.Process(target=_run, args=(work, out), daemon=True)
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return float(out.get()) if not out.empty() else None
