"""The dispatcher as its own process: SIGKILLed mid-run and restarted, nothing is lost and a
repeat carries the same webhook-id; a receiver down under load gets every event once back."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from support_wait import wait_for
from webhook_receiver import Receiver
from webhook_support import (
    add_endpoint,
    deliveries,
    dispatcher_process,
    drop_endpoints,
    new_org,
    receiver_outage_under_load,
    record_events,
    stop_process,
    webhook_settings,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]
EVENTS = 200


@pytest.fixture
def org(stack: Any) -> Iterator[str]:
    settings = webhook_settings(stack)
    org_id = new_org(settings)
    yield org_id
    drop_endpoints(settings, org_id)


def test_dispatcher_sigkilled_mid_run_loses_nothing(stack: Any, org: str) -> None:
    settings = webhook_settings(stack, webhook_timeout="2")
    receiver = Receiver()
    # After 40 answers the receiver sits on requests: the kill lands with every dispatcher
    # thread mid-attempt, whatever the machine's load.
    receiver.hold_after = 40
    process = None
    try:
        endpoint, secret = add_endpoint(settings, org, receiver.url())
        made = record_events(settings, org, EVENTS)
        process = dispatcher_process(stack, webhook_timeout="2")
        wait_for(lambda: not receiver.hold.is_set(), 60, "40 webhooks")
        assert stop_process(process, signal.SIGKILL) == -signal.SIGKILL
        assert len(set(receiver.ids())) < EVENTS
        receiver.hold_after = None
        receiver.hold.set()
        process = dispatcher_process(stack, webhook_timeout="2")
        expected = {f"evt_{n}" for n in made}
        wait_for(lambda: set(receiver.ids()) >= expected, 120, "every event after the restart")
        wait_for(
            lambda: all(d["status"] == "delivered" for d in deliveries(settings, endpoint["id"])),
            60,
            "every delivery recorded",
        )
    finally:
        if process is not None:
            stop_process(process)
        receiver.close()
    assert set(receiver.ids()) == expected
    repeats = {key: n for key, n in Counter(receiver.ids()).items() if n > 1}
    # Repeats are the attempts cut by the kill (or timed out while the receiver sat on them):
    # the same webhook-id and byte-identical body, so the receiver's idempotency key holds.
    for webhook_id in repeats:
        assert len({request.body for request in receiver.for_id(webhook_id)}) == 1
    assert sum(repeats.values()) - len(repeats) < 40, repeats
    assert len(deliveries(settings, endpoint["id"])) == EVENTS  # one row per event
    for request in receiver.requests:
        Webhook(secret).verify(request.body, request.headers)


def test_receiver_down_under_load_gets_every_event_when_back(stack: Any) -> None:
    settings = webhook_settings(stack)
    orgs = [new_org(settings) for _ in range(2)]

    def load() -> None:
        def writer(org_id: str) -> None:
            for _ in range(10):
                record_events(settings, org_id, 10)

        threads = [threading.Thread(target=writer, args=(org,)) for org in orgs for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    figures = receiver_outage_under_load(stack, orgs, load, down_seconds=8, drain_timeout=120)
    print("receiver outage:", figures.line())
    assert figures.events == 400, figures.line()
    assert figures.drain_seconds is not None, figures.line()
    assert (figures.lost, figures.bad_signatures) == (0, 0), figures.line()
    assert figures.killed_dispatchers == 1
