"""The short reliability run inside `make test` (issue 7, scenarios 2 and 4 in small):
a few hundred mixed messages while S3 is down for 10 s and a worker is SIGKILLed mid-job,
then the whole hostile corpus. Nothing lost, nothing doubled, nothing bounced, nothing
crashed. The full suite with the figures is tests/reliability/ (`make reliability`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from hostile import CORPUS
from reliability_harness import (
    FIGURES,
    LOAD_ORGS,
    SERVICE_FAULT_MARKERS,
    SUBTABLES,
    Figures,
    Harness,
    ensure_reporter,
    hostile_table,
    not_the_scheduler,
    reliability_stack,
    send_hostile,
)
from smtp_load import MessageFactory, SmtpLoad

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MESSAGES = 160
RATE = 10.0  # messages/s: the load runs through both faults


@pytest.fixture(scope="module")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    ensure_reporter(request.config)
    with reliability_stack(keep=request.config.getoption("--keep-stack"), workers=2) as harness:
        yield harness


def test_s3_outage_and_killed_worker_under_load_lose_and_double_nothing(
    harness: Harness,
) -> None:
    tag = f"short-{uuid.uuid4().hex[:6]}"
    window = harness.window()
    load = SmtpLoad(harness.stack.smtp_host, harness.stack.smtp_port, sessions=20, retry_for=180)
    load.start(MessageFactory(tag, LOAD_ORGS).make(MESSAGES), rate=RATE)
    harness.log(f"load started: {MESSAGES} messages at {RATE}/s")
    time.sleep(4)
    harness.outage("s3", 10)
    time.sleep(2)
    worker = not_the_scheduler(harness)
    killed_mid_job = harness.kill_worker_mid_job(worker)
    harness.log(f"{worker} killed (mid-job: {killed_mid_job})")
    load.finish(timeout=300)
    accepted = sum(1 for m in load.messages if m.accepted)
    harness.log(f"load finished: {accepted} accepted")
    drain = harness.wait_finished(tag, [], accepted, timeout=240)
    harness.log(f"drained in {drain}")
    figures = harness.account(
        Figures("short: S3 down 10 s + worker SIGKILL"), window, tag=tag, load=load
    )
    figures.drain_seconds = drain
    if not killed_mid_job:
        figures.notes.append(f"{worker} had no job running when killed")
    FIGURES.append(figures)

    assert drain is not None, f"not drained: {harness.queue_counts()}"
    assert figures.sent == MESSAGES
    assert figures.accepted == MESSAGES, figures.notes
    assert (figures.lost, figures.duplicates, figures.bounced) == (0, 0, 0), figures.notes
    assert figures.altered == 0, figures.notes  # byte integrity: stored raw == sent
    assert figures.stored == figures.parsed == MESSAGES
    assert harness.log_problems(window, SERVICE_FAULT_MARKERS) == []
    assert harness.unexpected_restarts(window.started) == []
    assert all(harness.all_running().values()), harness.all_running()


def test_hostile_corpus_is_stored_or_refused_and_crashes_nothing(harness: Harness) -> None:
    window = harness.window()
    results = send_hostile(harness, list(CORPUS))
    harness.log("hostile corpus done")
    SUBTABLES.append(hostile_table(results))
    problems = {r.name: r.problems for r in results if r.problems}
    assert problems == {}
    assert {r.outcome for r in results} <= {"stored", "refused"}
    assert harness.log_problems(window) == []
    assert harness.unexpected_restarts(window.started) == []
    assert all(harness.all_running().values()), harness.all_running()
    assert "status=bounced" not in harness.maillog_since(window)
