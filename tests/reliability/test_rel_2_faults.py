"""Scenario 2, faults while mail flows: PostgreSQL, S3 and Redis each stopped for 30 s, then
a worker SIGKILLed mid-job, the milter killed, the delivery service killed; one at a time.

Killed services come back the way the units bring them back (Restart=always, RestartSec=2:
the harness's supervisor). While the milter is down Postfix answers 4xx
(milter_default_action = tempfail) and the client retries, as a sending MTA would.

After recovery: zero lost, zero duplicated, zero bounced; the deferred queue drains by itself
(Postfix's own retries, no flush); the drain time after each fault is reported.
"""

from __future__ import annotations

import pytest
from reliability_harness import SERVICE_FAULT_MARKERS, Harness, killed, run_under_load, stopped

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(1200)]

OUTAGE = 30.0
RATE = 4.0


def test_faults_one_at_a_time_lose_double_and_bounce_nothing(rel: Harness) -> None:
    window = rel.window()
    steps = [
        (f"PostgreSQL stopped {OUTAGE:.0f} s", stopped("postgres", OUTAGE)),
        (f"S3 stopped {OUTAGE:.0f} s", stopped("s3", OUTAGE)),
        (f"Redis stopped {OUTAGE:.0f} s", stopped("redis", OUTAGE)),
        ("worker SIGKILLed mid-job", killed("worker")),
        ("milter SIGKILLed", killed("milter")),
        ("delivery service SIGKILLed", killed("deliver")),
    ]
    figures, _load = run_under_load(rel, "2 faults during load", steps, rate=RATE)

    assert figures.drain_seconds is not None, f"not drained: {rel.queue_counts()}"
    assert figures.sent > 0 and figures.accepted == figures.sent, figures.notes
    assert (figures.lost, figures.duplicates, figures.bounced) == (0, 0, 0), figures.notes
    assert figures.altered == 0, figures.notes  # byte integrity: stored raw == sent
    assert figures.stored == figures.parsed == figures.accepted
    assert figures.deferred > 0, "no fault ever deferred a delivery: the faults did not bite"
    assert rel.log_problems(window, SERVICE_FAULT_MARKERS) == []
    # RQ workers exit when Redis goes away under them (systemd restarts them; their jobs
    # are re-queued); the delivery service and the milter ride out every backend outage.
    crashed = {r.component for r in rel.unexpected_restarts(window.started)}
    assert crashed <= {"worker"}, crashed
    assert all(rel.all_running().values()), rel.all_running()
