"""Webhook delivery end to end: real PostgreSQL (the stack), the real dispatcher, a real HTTP
receiver on loopback; signatures checked by the `standardwebhooks` package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from support_wait import wait_for
from webhook_receiver import Receiver
from webhook_support import (
    add_endpoint,
    attempts,
    deliveries,
    drop_endpoints,
    new_org,
    org_events,
    record_events,
    running_dispatcher,
    webhook_settings,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]


@pytest.fixture
def wh(stack: Any) -> Any:
    return webhook_settings(stack)


@pytest.fixture
def org(wh: Any) -> Iterator[str]:
    org_id = new_org(wh)
    yield org_id
    drop_endpoints(wh, org_id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_event_arrives_signed_and_thin(wh: Any, org: str, receiver: Receiver) -> None:
    endpoint, secret = add_endpoint(wh, org, receiver.url())
    message_id = "0b8f7a52-3c4e-4f5a-9b1c-2d3e4f5a6b7c"
    [event_id] = record_events(wh, org, inbound_message_id=message_id, trace_id="trace-1")
    with running_dispatcher(wh):
        wait_for(lambda: receiver.requests, 30, "the webhook")
        wait_for(lambda: deliveries(wh, endpoint["id"])[0]["status"] == "delivered", 30)
    [request] = receiver.requests
    body = Webhook(secret).verify(request.body, request.headers)
    assert request.webhook_id == f"evt_{event_id}" == body["id"]
    assert body["type"] == "message.parsed"
    assert body["data"]["org_id"] == org
    assert body["data"]["trace_id"] == "trace-1"
    assert body["data"]["sequence"] == 1
    assert body["data"]["links"]["message"] == (
        f"https://api.orderflow.test/v1/messages/{message_id}"
    )
    assert request.headers["content-type"] == "application/json"
    [attempt] = attempts(wh, endpoint["id"])
    assert attempt["status_code"] == 200 and attempt["duration_ms"] >= 0
    assert attempt["response_excerpt"] == "ok"
    [delivered] = org_events(wh, org, "webhook.delivered")
    assert delivered["data"]["webhook_id"] == f"evt_{event_id}"


def test_type_filter_sends_only_subscribed_events(wh: Any, org: str, receiver: Receiver) -> None:
    add_endpoint(wh, org, receiver.url(), ("document.*",))
    record_events(wh, org, kind="message.parsed")
    [wanted] = record_events(wh, org, kind="document.created")
    with running_dispatcher(wh):
        wait_for(lambda: receiver.requests, 30, "the document event")
    assert receiver.ids() == [f"evt_{wanted}"]


def test_receiver_500_then_200_is_retried_with_the_same_webhook_id(
    wh: Any, org: str, receiver: Receiver
) -> None:
    receiver.script = [(500, {}), (500, {})]
    endpoint, secret = add_endpoint(wh, org, receiver.url())
    [event_id] = record_events(wh, org)
    with running_dispatcher(wh):
        wait_for(lambda: len(receiver.requests) >= 3, 30, "three attempts")
        wait_for(lambda: deliveries(wh, endpoint["id"])[0]["status"] == "delivered", 30)
    assert receiver.ids() == [f"evt_{event_id}"] * 3
    for request in receiver.requests:
        Webhook(secret).verify(request.body, request.headers)
    assert len({request.body for request in receiver.requests}) == 1
    recorded = attempts(wh, endpoint["id"])
    assert [a["status_code"] for a in recorded] == [500, 500, 200]
    assert len(recorded[0]["response_excerpt"].encode()) <= 1024  # the 3 KB answer, cut
    [delivery] = deliveries(wh, endpoint["id"])
    assert delivery["total_attempts"] == 3


def test_retry_after_is_honoured(wh: Any, org: str, receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": "2"})]
    _endpoint, _secret = add_endpoint(wh, org, receiver.url())
    record_events(wh, org)
    with running_dispatcher(wh):
        wait_for(lambda: len(receiver.requests) >= 2, 30, "the retry")
    first, second = receiver.requests[:2]
    # The schedule says 0.2 s; the receiver asked for 2 s.
    assert second.at - first.at >= 1.9
    # Same webhook-id (the idempotency key), a timestamp of its own per attempt.
    assert first.webhook_id == second.webhook_id
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])


def test_410_disables_the_endpoint_with_an_event(wh: Any, org: str, receiver: Receiver) -> None:
    receiver.default_status = 410
    gone, _secret = add_endpoint(wh, org, receiver.url("/gone"))
    other = Receiver()
    try:
        alive, _ = add_endpoint(wh, org, other.url())
        record_events(wh, org)
        with running_dispatcher(wh):
            wait_for(lambda: org_events(wh, org, "endpoint.disabled"), 30, "endpoint.disabled")
            [later] = record_events(wh, org)
            wait_for(lambda: f"evt_{later}" in other.ids(), 30, "the later event elsewhere")
        assert len(receiver.requests) == 1  # never tried again after the 410
        [disabled] = org_events(wh, org, "endpoint.disabled")
        assert disabled["data"]["endpoint_id"] == gone["id"]
        assert "410" in disabled["data"]["reason"]
        assert [d["status"] for d in deliveries(wh, gone["id"])] == ["failed"]
        assert alive["id"] != gone["id"]
    finally:
        other.close()


def test_exhausted_schedule_fails_then_recover_delivers(
    wh: Any, org: str, receiver: Receiver
) -> None:
    from datetime import UTC, datetime, timedelta

    from orderflow_ingest import db
    from orderflow_ingest.webhooks import endpoints

    receiver.default_status = 500
    endpoint, secret = add_endpoint(wh, org, receiver.url())
    [event_id] = record_events(wh, org)
    with running_dispatcher(wh):
        wait_for(lambda: org_events(wh, org, "webhook.failed"), 30, "webhook.failed")
        assert len(receiver.requests) == 5  # the first attempt and four retries
        receiver.default_status = 200
        with db.connect(wh.database_url) as conn:
            count = endpoints.recover(
                conn, [org], endpoint["id"], datetime.now(UTC) - timedelta(hours=1)
            )
            conn.commit()
        assert count == 1
        wait_for(lambda: deliveries(wh, endpoint["id"])[0]["status"] == "delivered", 30)
        [delivery] = deliveries(wh, endpoint["id"])
        with db.connect(wh.database_url) as conn:
            assert endpoints.redeliver(conn, [org], delivery["id"]) is not None
            conn.commit()
        wait_for(lambda: len(receiver.requests) == 7, 30, "the redelivery")
    assert set(receiver.ids()) == {f"evt_{event_id}"}
    Webhook(secret).verify(receiver.requests[-1].body, receiver.requests[-1].headers)


def test_endpoint_failing_for_the_disable_period_is_disabled(
    stack: Any, org: str, receiver: Receiver
) -> None:
    settings = webhook_settings(
        stack, webhook_disable_after="1s", webhook_retry_schedule=",".join(["0.3s"] * 30)
    )
    receiver.default_status = 500
    endpoint, _secret = add_endpoint(settings, org, receiver.url())
    record_events(settings, org)
    with running_dispatcher(settings):
        wait_for(lambda: org_events(settings, org, "endpoint.disabled"), 30, "the disable")
    [disabled] = org_events(settings, org, "endpoint.disabled")
    assert "failed since" in disabled["data"]["reason"]
    [row] = deliveries(settings, endpoint["id"])
    assert row["status"] == "failed"
    assert 3 <= len(receiver.requests) < 30


def test_rotation_sends_two_signatures_both_valid(wh: Any, org: str, receiver: Receiver) -> None:
    from orderflow_ingest import db
    from orderflow_ingest.webhooks import endpoints

    endpoint, old_secret = add_endpoint(wh, org, receiver.url())
    with db.connect(wh.database_url) as conn:
        rotated = endpoints.rotate_secret(conn, [org], endpoint["id"], grace_seconds=3600)
        conn.commit()
    assert rotated is not None
    row, new_secret = rotated
    assert row["previous_secret_active"] and new_secret != old_secret
    record_events(wh, org)
    with running_dispatcher(wh):
        wait_for(lambda: receiver.requests, 30, "the webhook")
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(new_secret).verify(request.body, request.headers)
    Webhook(old_secret).verify(request.body, request.headers)


def test_sequence_numbers_order_one_messages_events(wh: Any, org: str, receiver: Receiver) -> None:
    add_endpoint(wh, org, receiver.url())
    message_id = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    for kind in ("message.received", "message.stored", "message.parsed"):
        record_events(wh, org, kind=kind, inbound_message_id=message_id)
    with running_dispatcher(wh):
        wait_for(lambda: len(receiver.requests) >= 3, 30, "three webhooks")
    by_type = {r.json()["type"]: r.json()["data"]["sequence"] for r in receiver.requests}
    assert by_type == {"message.received": 1, "message.stored": 2, "message.parsed": 3}


def test_redirects_are_not_followed(wh: Any, org: str, receiver: Receiver) -> None:
    target = Receiver()
    try:
        receiver.default_status = 302
        receiver.script = [(302, {"Location": target.url()})]
        endpoint, _secret = add_endpoint(wh, org, receiver.url())
        record_events(wh, org)
        with running_dispatcher(wh):
            wait_for(lambda: len(attempts(wh, endpoint["id"])) >= 2, 30, "two attempts")
        assert target.requests == []
        assert {a["status_code"] for a in attempts(wh, endpoint["id"])} == {302}
    finally:
        target.close()


def test_a_slow_receiver_is_cut_off_at_the_total_timeout(
    stack: Any, org: str, receiver: Receiver
) -> None:
    settings = webhook_settings(stack, webhook_timeout="1", webhook_retry_schedule="60s")
    receiver.hold.clear()
    endpoint, _secret = add_endpoint(settings, org, receiver.url())
    record_events(settings, org)
    with running_dispatcher(settings):
        wait_for(lambda: attempts(settings, endpoint["id"]), 30, "the attempt")
    [attempt] = attempts(settings, endpoint["id"])
    assert attempt["error"] == "timed out"
    assert 900 <= attempt["duration_ms"] < 3000


def test_attempts_to_internal_addresses_are_refused_without_the_allow_list(
    stack: Any, org: str, receiver: Receiver
) -> None:
    """Registered while allowed; the dispatcher (no allow-list) vets again and refuses."""
    allowed = webhook_settings(stack)
    endpoint, _secret = add_endpoint(allowed, org, receiver.url())
    strict = webhook_settings(stack, webhook_allow="")
    record_events(strict, org)
    with running_dispatcher(strict):
        wait_for(lambda: len(attempts(strict, endpoint["id"])) >= 2, 30, "refused attempts")
    assert receiver.requests == []
    assert all(a["error"].startswith("refused:") for a in attempts(strict, endpoint["id"]))
    assert all(a["address"] is None for a in attempts(strict, endpoint["id"]))


def test_registration_of_internal_urls_is_refused_without_the_allow_list(
    stack: Any, org: str
) -> None:
    from orderflow_ingest import db
    from orderflow_ingest.webhooks import endpoints

    strict = endpoints.UrlGuard.from_settings(webhook_settings(stack, webhook_allow=""))
    with db.connect(stack.settings.database_url) as conn:
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x"):
            with pytest.raises(endpoints.InvalidEndpoint):
                endpoints.create_endpoint(conn, [org], org, url, guard=strict)
        assert endpoints.list_endpoints(conn, [org]) == []


def test_two_dispatchers_share_the_work_without_duplicates(
    wh: Any, org: str, receiver: Receiver
) -> None:
    add_endpoint(wh, org, receiver.url())
    made = record_events(wh, org, 60)
    with running_dispatcher(wh), running_dispatcher(wh):
        wait_for(lambda: len(receiver.requests) >= 60, 60, "60 webhooks")
    assert sorted(receiver.ids()) == sorted(f"evt_{n}" for n in made)


def test_a_hanging_receiver_does_not_hold_up_another_orgs_webhooks(
    stack: Any, org: str, receiver: Receiver
) -> None:
    settings = webhook_settings(stack, webhook_timeout="30")
    receiver.hold.clear()  # org 1's receiver takes every request and never answers
    other_org = new_org(settings)
    other = Receiver()
    try:
        add_endpoint(settings, org, receiver.url())
        add_endpoint(settings, other_org, other.url())
        record_events(settings, org, 20)
        with running_dispatcher(settings):
            wait_for(lambda: len(receiver.requests) >= 2, 30, "the hanging receiver's requests")
            made = record_events(settings, other_org, 5)
            # Without a per-endpoint limit all four threads would sit on the hanging
            # receiver for its 30 s timeout before org 2 got anything.
            wait_for(lambda: set(other.ids()) >= {f"evt_{n}" for n in made}, 20, "org 2's webhooks")
            assert len(receiver.requests) <= 2  # per_endpoint = concurrency 4 // 2
            receiver.hold.set()
    finally:
        other.close()
        drop_endpoints(settings, other_org)
