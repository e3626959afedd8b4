"""Events of the delivery path, through the stack's Postfix: a duplicate delivery records
message.duplicate on the first message, a conflicting one message.conflict on its own row."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import send_mail
from ops_support import wait_status
from samples import address, order_email
from support_wait import wait_for

pytestmark = pytest.mark.stack


def _events(db: Any, inbound_message_id: str, kind: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT type, trace_id, data, org_id::text AS org_id FROM event"
        " WHERE inbound_message_id = %s AND type = %s ORDER BY id",
        (inbound_message_id, kind),
    ).fetchall()


def test_a_duplicate_delivery_is_a_message_duplicate_event(stack: Any, db: Any) -> None:
    message = order_email(message_id=f"<dup-{uuid.uuid4().hex}@customer.example>")
    send_mail(stack, message, [address("acme")])
    row = wait_status(db, message["Message-ID"], ("STORED",))
    send_mail(stack, message, [address("acme")])
    (event,) = wait_for(
        lambda: _events(db, row["id"], "message.duplicate"), 60, "message.duplicate"
    )
    assert event["org_id"] == row["org_id"]
    assert event["trace_id"] != row["trace_id"]  # the duplicate delivery's own trace
    assert event["data"]["status"] == "STORED"
    assert "same_bytes" in event["data"]
    count = db.execute(
        "SELECT count(*) AS n FROM inbound_message WHERE source_message_id = %s",
        (message["Message-ID"],),
    ).fetchone()["n"]
    assert count == 1


def test_a_conflicting_delivery_is_a_message_conflict_event(stack: Any, db: Any) -> None:
    message_id = f"<conflict-{uuid.uuid4().hex}@customer.example>"
    first = order_email(message_id=message_id, body="First order.\n")
    second = order_email(message_id=message_id, body="Another order, same Message-ID.\n")
    send_mail(stack, first, [address("acme")])
    original = wait_status(db, message_id, ("STORED",))
    send_mail(stack, second, [address("acme")])

    def conflicting() -> dict[str, Any] | None:
        return db.execute(
            "SELECT id::text AS id, trace_id FROM inbound_message"
            " WHERE message_id = %s AND conflict_of IS NOT NULL",
            (message_id,),
        ).fetchone()

    row = wait_for(conflicting, 60, "the conflicting row")
    (event,) = _events(db, row["id"], "message.conflict")
    assert event["data"]["conflict_of"] == original["id"]
    assert event["trace_id"] == row["trace_id"]
    assert _events(db, original["id"], "message.conflict") == []
