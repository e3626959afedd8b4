"""The feed cursor never skips: many writers commit out of id order while a reader polls.

Each writer thread has its own connection and, per transaction, records a few events, waits a
random few milliseconds and commits (one in ten rolls back instead). A reader polls the feed
with small pages the whole time. Every committed event must be seen exactly once, no rolled
back event ever, and in the same order a fresh read from the start gives.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from orderflow_ingest import events

pytestmark = pytest.mark.stack

WRITERS = 8
TRANSACTIONS_PER_WRITER = 30
TYPE = "test.concurrent"


def _org_id(settings: Any, slug: str) -> str:
    """An org of this test only, so no other test's events interleave with ours."""
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO org (slug, name) VALUES (%s, %s) ON CONFLICT (slug) DO NOTHING",
            (slug, slug),
        )
        row = conn.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()
        assert row is not None
        return str(row["id"])


def _writer(
    url: str, org: str, marker: str, seed: int, committed: list[int], errors: list[BaseException]
) -> None:
    rng = random.Random(seed)
    try:
        with psycopg.connect(url, row_factory=dict_row) as conn:
            for _ in range(TRANSACTIONS_PER_WRITER):
                ids = [
                    events.record(conn, TYPE, org_id=org, trace_id=marker)
                    for _ in range(rng.randint(1, 3))
                ]
                time.sleep(rng.uniform(0, 0.02))
                if rng.random() < 0.1:
                    conn.rollback()
                else:
                    conn.commit()
                    committed.extend(ids)
    except BaseException as error:  # reported by the test, not lost in the thread
        errors.append(error)


def _poll(conn: Any, org: str, cursor: str, rng: random.Random) -> tuple[list[dict[str, Any]], str]:
    page, cursor = events.read(conn, cursor, org_ids=[org], types=[TYPE], limit=rng.randint(1, 9))
    conn.commit()
    return page, cursor


def test_a_polling_reader_sees_every_committed_event_exactly_once(settings: Any) -> None:
    org = _org_id(settings, "events-cursor-test")
    marker = uuid.uuid4().hex
    rng = random.Random(20261129)
    with psycopg.connect(settings.database_url, row_factory=dict_row) as reader:
        cursor = events.encode_cursor(0, 0)
        while True:  # start at the end of the feed: earlier runs' events are not ours
            page, cursor = _poll(reader, org, cursor, random.Random(0))
            if not page:
                break
        start = cursor
        committed: list[int] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=_writer,
                args=(settings.database_url, org, marker, seed, committed, errors),
            )
            for seed in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        seen: list[dict[str, Any]] = []
        while any(thread.is_alive() for thread in threads):
            page, cursor = _poll(reader, org, cursor, rng)
            seen.extend(page)
        for thread in threads:
            thread.join()
        assert not errors, errors
        deadline = time.monotonic() + 60
        while True:  # drain what committed after the last poll
            page, cursor = _poll(reader, org, cursor, rng)
            seen.extend(page)
            if not page and len(seen) >= len(committed):
                break
            assert time.monotonic() < deadline, "the feed did not catch up"
        replay, _ = events.read(reader, start, org_ids=[org], types=[TYPE], limit=1000)
        reader.commit()

    ids = [event["id"] for event in seen]
    assert len(ids) == len(set(ids)), "an event was returned twice"
    assert sorted(ids) == sorted(committed), "an event was skipped, or a rolled back one shown"
    assert {event["trace_id"] for event in seen} == {marker}
    assert [event["id"] for event in replay] == ids, "a replay from the start differs"
    # How often the feed order differed from id order, i.e. how often a plain id cursor
    # would have been at risk: reported, not asserted (it depends on scheduling).
    inversions = sum(1 for a, b in itertools.pairwise(ids) if b < a)
    print(f"{len(ids)} events, {inversions} delivered after a higher id")
