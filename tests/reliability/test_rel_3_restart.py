"""Scenario 3, restarts while mail flows: Postfix and then every component restarted (a
clean stop and start, as a deploy or a host maintenance does), one at a time.

Same assertions as the faults: nothing lost, nothing doubled, nothing bounced.
"""

from __future__ import annotations

import pytest
from reliability_harness import SERVICE_FAULT_MARKERS, Harness, restarted, run_under_load

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(1200)]

RATE = 4.0
COMPONENTS = ("postfix", "postgres", "redis", "s3", "deliver", "milter", "worker")


def test_every_component_restarted_mid_load_loses_and_doubles_nothing(rel: Harness) -> None:
    window = rel.window()
    steps = [(f"{name} restarted", restarted(name)) for name in COMPONENTS]
    figures, _load = run_under_load(rel, "3 restarts during load", steps, rate=RATE)

    assert figures.drain_seconds is not None, f"not drained: {rel.queue_counts()}"
    assert figures.sent > 0 and figures.accepted == figures.sent, figures.notes
    assert (figures.lost, figures.duplicates, figures.bounced) == (0, 0, 0), figures.notes
    assert figures.altered == 0, figures.notes  # byte integrity: stored raw == sent
    assert figures.stored == figures.parsed == figures.accepted
    assert rel.log_problems(window, SERVICE_FAULT_MARKERS) == []
    # An RQ worker exits when Redis goes away while it watches a job (RQ's own behaviour);
    # systemd restarts it and its job is re-queued. Our other services must not crash.
    crashed = {r.component for r in rel.unexpected_restarts(window.started)}
    assert crashed <= {"worker"}, crashed
    assert all(rel.all_running().values()), rel.all_running()
