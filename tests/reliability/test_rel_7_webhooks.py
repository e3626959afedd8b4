"""Scenario 7, webhooks (issue 11): the receiver is down for minutes while mail flows, and a
webhook dispatcher is SIGKILLed and replaced mid-outage. When the receiver returns, every
event of the window arrives (validly signed); repeats only as retries with the same
webhook-id. The outage length is WEBHOOK_RECEIVER_DOWN_SECONDS (default 120 s);
tests/test_webhooks_restart.py runs the same scenario for seconds in `make test`.
"""

from __future__ import annotations

import os
import uuid

import pytest
from reliability_harness import LOAD_ORGS, Harness
from smtp_load import MessageFactory, SmtpLoad
from webhook_support import receiver_outage_under_load

pytestmark = [pytest.mark.reliability, pytest.mark.stack, pytest.mark.timeout(1800)]

DOWN_SECONDS = float(os.environ.get("WEBHOOK_RECEIVER_DOWN_SECONDS", "120"))
MESSAGES = 400


def test_receiver_down_for_minutes_under_load_every_event_delivered(rel: Harness) -> None:
    tag = f"webhooks-{uuid.uuid4().hex[:6]}"
    with rel.connect() as conn:
        org_ids = [
            str(row["id"])
            for row in conn.execute("SELECT id FROM org WHERE slug = ANY(%s)", (list(LOAD_ORGS),))
        ]

    def load() -> None:
        smtp = SmtpLoad(rel.stack.smtp_host, rel.stack.smtp_port, sessions=20, per_connection=5)
        smtp.run(MessageFactory(tag, LOAD_ORGS).make(MESSAGES))
        rel.log(f"webhooks: {MESSAGES} messages sent during the receiver outage, {smtp.stats}")
        rel.wait_finished(tag, [], MESSAGES, timeout=600)

    figures = receiver_outage_under_load(
        rel.stack, org_ids, load, down_seconds=DOWN_SECONDS, drain_timeout=600
    )
    rel.log(f"webhooks after a {DOWN_SECONDS:.0f}s receiver outage: {figures.line()}")

    assert figures.events >= MESSAGES * 3, figures.line()  # received, stored, parsed at least
    assert figures.drain_seconds is not None, figures.line()
    assert (figures.lost, figures.bad_signatures) == (0, 0), figures.line()
    assert figures.killed_dispatchers == 1
