"""Scenario 4, hostile input: every entry of tests/hostile.py through the milter-enabled
stack. Each is accepted and stored raw or refused with a clear SMTP code; none crashes a
component or bounces for our fault; each stored one ends PARSED or FAILED with a reason."""

from __future__ import annotations

import pytest
from hostile import CORPUS
from reliability_harness import SUBTABLES, Harness, hostile_table, send_hostile

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(600)]


def test_hostile_corpus_is_stored_or_refused_and_crashes_nothing(rel: Harness) -> None:
    window = rel.window()
    results = send_hostile(rel, list(CORPUS))
    SUBTABLES.append(hostile_table(results))

    assert {r.name: r.problems for r in results if r.problems} == {}
    assert {r.outcome for r in results} <= {"stored", "refused"}
    assert rel.log_problems(window) == []
    assert rel.unexpected_restarts(window.started) == []
    assert all(rel.all_running().values()), rel.all_running()
    log = rel.maillog_since(window)
    assert [line for line in log.splitlines() if "status=bounced" in line] == []
