"""Webhook signatures, checked by the `standardwebhooks` package (not by our own code), the
thin payload, event-type filters and the retry schedule."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from orderflow_ingest.webhooks import payload, schedule, signing


def headers_for(secrets: list[str], webhook_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(secrets, webhook_id, timestamp, body),
    }


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = signing.generate_secret()
    body = b'{"type":"message.parsed","id":"evt_1"}'
    assert Webhook(secret).verify(body, headers_for([secret], "evt_1", body)) == json.loads(body)


def test_signature_of_other_secret_or_changed_body_is_rejected() -> None:
    secret, other = signing.generate_secret(), signing.generate_secret()
    body = b'{"a":1}'
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers_for([secret], "evt_2", body))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers_for([secret], "evt_2", body))


def test_rotation_gives_two_signatures_both_valid() -> None:
    new, old = signing.generate_secret(), signing.generate_secret()
    body = b"{}"
    headers = headers_for([new, old], "evt_3", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)


def test_secret_format_is_whsec_base64_of_32_bytes() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(signing.secret_key(secret)) == 32
    assert signing.generate_secret() != secret
    with pytest.raises(ValueError):
        signing.secret_key("whsec_" + "QUJD")  # 3 bytes: too short


def test_webhook_id_with_a_dot_is_refused() -> None:
    with pytest.raises(ValueError):
        signing.sign(signing.generate_secret(), "evt.1", 1, b"{}")


def test_payload_is_thin_with_ids_links_and_sequence() -> None:
    event = {
        "id": 42,
        "type": "document.created",
        "org_id": "o-1",
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "trace_id": "t-1",
        "inbound_message_id": "m-1",
        "document_id": "d-1",
        "data": {"file_name": "po.pdf"},
    }
    body = json.loads(payload.build(event, 3, "https://api.example.com/"))
    assert body["type"] == "document.created"
    assert body["id"] == "evt_42"
    assert body["timestamp"] == "2026-01-02T03:04:05Z"
    data = body["data"]
    assert data["sequence"] == 3
    assert data["trace_id"] == "t-1"
    assert data["links"] == {
        "message": "https://api.example.com/v1/messages/m-1",
        "document": "https://api.example.com/v1/documents/d-1",
    }
    assert data["details"] == {"file_name": "po.pdf"}


def test_type_filter_exact_wildcard_all_and_never_webhook_outcomes() -> None:
    assert payload.type_matches("message.parsed", [])
    assert payload.type_matches("message.parsed", ["message.*"])
    assert payload.type_matches("message.parsed", ["message.parsed"])
    assert not payload.type_matches("document.created", ["message.*"])
    assert not payload.type_matches("webhook.delivered", [])
    with pytest.raises(ValueError):
        payload.check_event_types(["webhook.failed"])
    with pytest.raises(ValueError):
        payload.check_event_types(["message"])
    assert payload.check_event_types(["message.*", "message.*"]) == ["message.*"]


SPEC_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def test_retry_schedule_runs_from_seconds_to_a_day_then_stops() -> None:
    delays = [schedule.retry_delay(n, SPEC_SCHEDULE, 0) for n in range(1, 10)]
    assert delays == list(SPEC_SCHEDULE)
    assert schedule.retry_delay(10, SPEC_SCHEDULE, 0) is None


def test_retry_jitter_stays_within_its_fraction_and_varies() -> None:
    rng = random.Random(7)
    delays = {schedule.retry_delay(3, SPEC_SCHEDULE, 0.2, rng) for _ in range(50)}
    assert all(1440 <= delay <= 2160 for delay in delays if delay is not None)
    assert len(delays) > 40


def test_retry_after_stretches_the_delay_but_is_capped() -> None:
    assert schedule.next_delay(1, (1.0,), 0, 30, 3600) == 30
    assert schedule.next_delay(1, (1.0,), 0, 10**9, 3600) == 3600
    assert schedule.next_delay(1, (100.0,), 0, 5, 3600) == 100
    assert schedule.next_delay(2, (1.0,), 0, 30, 3600) is None


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule.parse_retry_after("120") == 120
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert schedule.parse_retry_after(later, now) == 90
    assert schedule.parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT", now) == 0
    assert schedule.parse_retry_after("soon") is None
    assert schedule.parse_retry_after(None) is None


def test_an_attempt_that_cannot_even_sign_is_a_failed_attempt_not_a_crash() -> None:
    from orderflow_ingest.webhooks.delivery import DeliveryConfig, attempt
    from orderflow_ingest.webhooks.ssrf import AddressPolicy

    config = DeliveryConfig(AddressPolicy(["127.0.0.1/32"]), False, (1.0,), 0, 60, 60, 1, 2)
    claimed = {
        "id": "d-1",
        "url": "http://127.0.0.1:9/hook",
        "payload": "{}",
        "secret": "whsec_not-base64!",
        "previous_secret": None,
        "webhook_id": "evt_1",
    }
    result = attempt(claimed, config)
    assert result.status is None
    assert result.error == "internal error: Error"  # binascii.Error from the bad secret
