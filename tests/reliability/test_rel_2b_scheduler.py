"""Scenario 2, one more fault: the worker that runs RQ's scheduler is SIGKILLed while
failed jobs wait for their retry (ATTACHMENT_RETRY: 10 s, 30 s, ...), and then mail is quiet.

Only the process holding the queue's scheduler lock moves due retries back to the queue.
When it dies the lock lives on for 61 s (RQScheduler: interval + 60), and a worker used to take
it over only in a maintenance pass after its blocking dequeue (RQ's default worker_ttl: up to
405 s): retries stalled for minutes on a quiet queue. Now the restarted worker frees the lock
of a scheduler that died on its host at start-up (jobs/worker.py), and idle workers wait at
most worker_ttl - 15 = 45 s between maintenance passes.

The other worker is paused meanwhile, so the restarted worker alone must resume the retries.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from reliability_harness import FIGURES, Figures, Harness
from rq.registry import ScheduledJobRegistry
from smtp_load import MessageFactory, SmtpLoad
from support_wait import poll_until

from orderflow_ingest.job_queue import make_redis

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(600)]

# The supervisor restarts the killed worker after 2 s; it requeues the job it was holding
# and takes over the scheduler lock at start, and the first retry is due 10 s after its
# failure: 45 s leaves room for a loaded machine (measured: 9 s; 110 s and more before).
BOUND = 45.0


def scheduled(harness: Harness) -> int:
    settings = harness.stack.settings
    with make_redis(settings) as redis:
        return ScheduledJobRegistry(settings.attachment_queue, connection=redis).count


def _signal(harness: Harness, worker: str, sig: int) -> None:
    pid = harness.pid_of(worker)
    assert pid is not None, f"{worker} is not running"
    os.killpg(pid, sig)


def test_retries_resume_soon_after_the_scheduler_worker_is_killed(rel: Harness) -> None:
    holder = poll_until(lambda: rel.scheduler_holder() is not None, 130, 1.0)
    assert holder is not None, "no worker holds the RQ scheduler lock"
    holder_name = rel.scheduler_holder()
    assert holder_name is not None
    others = [w for w in rel.workers() if w != holder_name]
    tag = f"sched-{uuid.uuid4().hex[:6]}"
    window = rel.window()
    # Workers paused while three messages are stored and their jobs queued; S3 stopped before
    # the scheduler's worker resumes, so that the jobs fail and wait for their retry.
    for worker in rel.workers():
        _signal(rel, worker, signal.SIGSTOP)
    try:
        load = SmtpLoad(rel.stack.smtp_host, rel.stack.smtp_port, sessions=2)
        load.run(MessageFactory(tag, ["acme"]).make(3))
        assert poll_until(lambda: _stored(rel, tag) == 3, 120) is not None
        rel.stop("s3")
        _signal(rel, holder_name, signal.SIGCONT)
        assert poll_until(lambda: scheduled(rel) >= 1, 60) is not None, "no retry scheduled"
        rel.kill(holder_name)
        rel.start("s3")
        killed_at = time.monotonic()
        took = rel.wait_finished(tag, [], 3, timeout=BOUND)
        waited = time.monotonic() - killed_at
    finally:
        for worker in others:
            _signal(rel, worker, signal.SIGCONT)
    figures = rel.account(
        Figures("2b scheduler's worker SIGKILLed, then quiet"), window, tag=tag, load=load
    )
    figures.drain_seconds = took
    figures.notes.append(
        f"retries resumed {took:.0f}s after the kill"
        if took is not None
        else f"retries still waiting {waited:.0f}s after the kill (bound {BOUND:.0f}s)"
    )
    FIGURES.append(figures)
    assert took is not None, f"{scheduled(rel)} retries still waiting after {BOUND:.0f}s"


def _stored(harness: Harness, tag: str) -> int:
    return sum(1 for row in harness.rows(tag) if row["status"] in ("STORED", "PARSED"))
