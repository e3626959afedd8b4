"""The dispatcher's second half: claim a due delivery, make one attempt, record the outcome.

A claim moves the delivery's next_attempt_at one lease ahead and commits (FOR UPDATE SKIP
LOCKED: dispatchers on several hosts never claim the same row), so no transaction stays open
during the HTTP request. A dispatcher killed mid-attempt leaves the row to be claimed again
when the lease runs out: at-least-once, and a repeat carries the same webhook-id. The outcome
is recorded only if nobody recorded one since the claim (total_attempts unchanged), together
with the webhook.delivered / webhook.failed / endpoint.disabled events it causes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orderflow_ingest import events, metrics
from orderflow_ingest.db import Conn
from orderflow_ingest.logs import log_event
from orderflow_ingest.webhooks import endpoints, schedule, signing
from orderflow_ingest.webhooks.http import AttemptResult, post
from orderflow_ingest.webhooks.ssrf import AddressPolicy, Refused

DELIVERIES_METRIC = "orderflow_webhook_deliveries_total"
ATTEMPT_SECONDS_METRIC = "orderflow_webhook_attempt_seconds"
# A claim outlives the longest attempt (twice the total timeout, plus this) before another
# dispatcher may take it over: only a dispatcher that died mid-attempt leaves one to expire.
LEASE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class DeliveryConfig:
    policy: AddressPolicy
    require_https: bool
    retry_schedule: tuple[float, ...]
    jitter: float
    retry_after_max: float
    disable_after: float
    connect_timeout: float
    total_timeout: float

    @property
    def lease_seconds(self) -> float:
        return 2 * self.total_timeout + LEASE_MARGIN_SECONDS

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryConfig:
        return cls(
            policy=AddressPolicy(settings.webhook_allow),
            require_https=settings.webhook_require_https,
            retry_schedule=tuple(settings.webhook_retry_schedule),
            jitter=settings.webhook_jitter,
            retry_after_max=settings.webhook_retry_after_max,
            disable_after=settings.webhook_disable_after,
            connect_timeout=settings.webhook_connect_timeout,
            total_timeout=settings.webhook_timeout,
        )


CLAIM = """
UPDATE webhook_delivery d
SET next_attempt_at = now() + make_interval(secs => %s), updated_at = now()
FROM webhook_endpoint e
WHERE d.id = (
    SELECT d2.id FROM webhook_delivery d2 JOIN webhook_endpoint e2 ON e2.id = d2.endpoint_id
    WHERE d2.status = 'pending' AND d2.next_attempt_at <= now()
      AND e2.enabled AND e2.deleted_at IS NULL
      AND NOT (d2.endpoint_id = ANY(%s::uuid[]))
    ORDER BY d2.next_attempt_at
    LIMIT 1
    FOR UPDATE OF d2 SKIP LOCKED)
  AND e.id = d.endpoint_id
RETURNING d.id::text AS id, d.endpoint_id::text AS endpoint_id, d.org_id::text AS org_id,
          d.event_id, d.event_type, d.inbound_message_id::text AS inbound_message_id,
          d.webhook_id, d.payload, d.attempts, d.total_attempts, e.url, e.secret,
          CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret
"""
INSERT_ATTEMPT = """
INSERT INTO webhook_attempt (delivery_id, address, status_code, duration_ms, error,
                             response_excerpt)
VALUES (%s, %s, %s, %s, %s, %s)
"""
MARK_DELIVERED = """
UPDATE webhook_delivery SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL,
       attempts = attempts + 1, total_attempts = total_attempts + 1, last_status_code = %s,
       last_error = NULL, updated_at = now()
WHERE id = %s AND status = 'pending' AND total_attempts = %s
"""
MARK_RETRY = """
UPDATE webhook_delivery SET next_attempt_at = now() + make_interval(secs => %s),
       attempts = attempts + 1, total_attempts = total_attempts + 1, last_status_code = %s,
       last_error = %s, updated_at = now()
WHERE id = %s AND status = 'pending' AND total_attempts = %s
"""
MARK_FAILED = """
UPDATE webhook_delivery SET status = 'failed', next_attempt_at = NULL,
       attempts = attempts + 1, total_attempts = total_attempts + 1, last_status_code = %s,
       last_error = %s, updated_at = now()
WHERE id = %s AND status = 'pending' AND total_attempts = %s
"""
ENDPOINT_SUCCEEDED = """
UPDATE webhook_endpoint SET failing_since = NULL WHERE id = %s AND failing_since IS NOT NULL
"""
ENDPOINT_FAILED = """
UPDATE webhook_endpoint SET failing_since = coalesce(failing_since, now())
WHERE id = %s
RETURNING failing_since <= now() - make_interval(secs => %s) AS failing_too_long, failing_since
"""


def claim(
    conn: Conn, config: DeliveryConfig, busy_endpoints: Sequence[str] = ()
) -> dict[str, Any] | None:
    """One due delivery, leased to this dispatcher (committed), or None. Endpoints in
    `busy_endpoints` are skipped: one slow receiver must not hold every thread."""
    with conn.transaction():
        return conn.execute(CLAIM, (config.lease_seconds, list(busy_endpoints))).fetchone()


def attempt(claimed: dict[str, Any], config: DeliveryConfig) -> AttemptResult:
    """Vet the URL again (DNS may have changed since registration), sign and POST. Never
    raises: whatever goes wrong is a failed attempt, recorded and retried."""
    started = time.monotonic()
    try:
        return _attempt(claimed, config, started)
    except Exception as error:
        log_event(
            "webhook.attempt_crashed", logging.ERROR, exc_info=True, delivery_id=claimed["id"]
        )
        return AttemptResult(
            None, time.monotonic() - started, "", f"internal error: {type(error).__name__}",
            None, None,
        )  # fmt: skip


def _attempt(claimed: dict[str, Any], config: DeliveryConfig, started: float) -> AttemptResult:
    try:
        target = config.policy.vet(claimed["url"], config.require_https)
    except Refused as error:
        return AttemptResult(
            None, time.monotonic() - started, "", f"refused: {error}"[:300], None, None
        )
    body = claimed["payload"].encode()
    timestamp = int(time.time())
    active = [claimed["secret"]] + (
        [claimed["previous_secret"]] if claimed["previous_secret"] else []
    )
    headers = {
        "webhook-id": claimed["webhook_id"],
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(
            active, claimed["webhook_id"], timestamp, body
        ),
    }
    return post(target, headers, body, config.connect_timeout, config.total_timeout)


def record(
    conn: Conn,
    claimed: dict[str, Any],
    result: AttemptResult,
    config: DeliveryConfig,
    rng: random.Random | None = None,
) -> str:
    """Store the attempt and its consequences in one transaction; returns the outcome
    (delivered, retrying, failed, gone, or stale when another dispatcher recorded first)."""
    with conn.transaction():
        conn.execute(
            INSERT_ATTEMPT,
            (
                claimed["id"],
                result.address,
                result.status,
                int(result.seconds * 1000),
                result.error,
                result.excerpt or None,
            ),
        )
        outcome = _apply(conn, claimed, result, config, rng)
    metrics.count(DELIVERIES_METRIC, outcome=outcome)
    metrics.observe(ATTEMPT_SECONDS_METRIC, result.seconds, result="ok" if result.ok else "error")
    log_event(
        "webhook.attempt",
        logging.INFO if result.ok else logging.WARNING,
        delivery_id=claimed["id"],
        endpoint_id=claimed["endpoint_id"],
        org_id=claimed["org_id"],
        inbound_message_id=claimed["inbound_message_id"],
        webhook_id=claimed["webhook_id"],
        status_code=result.status,
        error=result.error,
        seconds=round(result.seconds, 3),
        outcome=outcome,
    )
    return outcome


def _apply(
    conn: Conn,
    claimed: dict[str, Any],
    result: AttemptResult,
    config: DeliveryConfig,
    rng: random.Random | None,
) -> str:
    key = (claimed["id"], claimed["total_attempts"])
    error = result.error or (f"HTTP {result.status}" if not result.ok else None)
    if result.ok:
        if conn.execute(MARK_DELIVERED, (result.status, *key)).rowcount == 0:
            return "stale"
        conn.execute(ENDPOINT_SUCCEEDED, (claimed["endpoint_id"],))
        _event(conn, "webhook.delivered", claimed, result)
        return "delivered"
    if result.status == 410:
        if conn.execute(MARK_FAILED, (result.status, error, *key)).rowcount == 0:
            return "stale"
        _event(conn, "webhook.failed", claimed, result)
        endpoints.disable(conn, claimed["endpoint_id"], "the receiver answered 410 Gone")
        return "gone"
    delay = schedule.next_delay(
        claimed["attempts"] + 1,
        config.retry_schedule,
        config.jitter,
        schedule.parse_retry_after(result.retry_after),
        config.retry_after_max,
        rng,
    )
    if delay is None:
        if conn.execute(MARK_FAILED, (result.status, error, *key)).rowcount == 0:
            return "stale"
        _event(conn, "webhook.failed", claimed, result)
        outcome = "failed"
    else:
        if conn.execute(MARK_RETRY, (delay, result.status, error, *key)).rowcount == 0:
            return "stale"
        outcome = "retrying"
    streak = conn.execute(
        ENDPOINT_FAILED, (claimed["endpoint_id"], config.disable_after)
    ).fetchone()
    if streak and streak["failing_too_long"]:
        endpoints.disable(
            conn,
            claimed["endpoint_id"],
            f"every attempt failed since {streak['failing_since'].isoformat(timespec='seconds')}",
        )
    return outcome


def _event(conn: Conn, kind: str, claimed: dict[str, Any], result: AttemptResult) -> None:
    events.record(
        conn,
        kind,
        org_id=claimed["org_id"],
        inbound_message_id=claimed["inbound_message_id"],
        data={
            "delivery_id": claimed["id"],
            "endpoint_id": claimed["endpoint_id"],
            "event_id": claimed["event_id"],
            "webhook_id": claimed["webhook_id"],
            "attempts": claimed["total_attempts"] + 1,
            "status_code": result.status,
            "error": result.error,
        },
    )
