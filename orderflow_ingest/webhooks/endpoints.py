"""Managing webhook endpoints and their deliveries: what the HTTP API and the CLI mount.

Every function takes `org_ids`, the orgs the caller may see, and filters every lookup by
them: another org's endpoint or delivery is None (a 404 upstream), never a 403 that would
confirm it exists. Functions write in the caller's transaction; the caller commits. Secrets
are returned only by create_endpoint and rotate_secret, once, never by a listing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from orderflow_ingest import events
from orderflow_ingest.db import Conn
from orderflow_ingest.webhooks import payload, signing
from orderflow_ingest.webhooks.ssrf import AddressPolicy, Refused

MAX_ENDPOINTS_PER_ORG = 20
MAX_LIST = 1000
OrgIds = Sequence[str | uuid.UUID]

ENDPOINT_COLUMNS = """
  id::text AS id, org_id::text AS org_id, url, event_types, description, enabled,
  disabled_reason, disabled_at, failing_since, created_at, updated_at,
  (previous_secret IS NOT NULL AND previous_secret_until > now()) AS previous_secret_active,
  previous_secret_until
"""
DELIVERY_COLUMNS = """
  id::text AS id, endpoint_id::text AS endpoint_id, org_id::text AS org_id, event_id,
  event_type, event_occurred_at, inbound_message_id::text AS inbound_message_id, webhook_id,
  status, attempts, total_attempts, next_attempt_at, last_status_code, last_error,
  delivered_at, created_at, updated_at
"""


class InvalidEndpoint(ValueError):
    """The request cannot make a valid endpoint; the message is safe to show the caller."""


@dataclass(frozen=True)
class UrlGuard:
    """How endpoint URLs are vetted: the SSRF policy and whether http:// is allowed."""

    policy: AddressPolicy
    require_https: bool = True
    secret_grace_seconds: float = 86400.0

    @classmethod
    def from_settings(cls, settings: Any) -> UrlGuard:
        return cls(
            AddressPolicy(settings.webhook_allow),
            settings.webhook_require_https,
            settings.webhook_secret_grace,
        )

    def check(self, url: str) -> None:
        try:
            self.policy.vet(url, self.require_https)
        except Refused as error:
            raise InvalidEndpoint(str(error)) from None


@lru_cache(maxsize=1)
def default_guard() -> UrlGuard:
    from orderflow_ingest.settings import load_settings

    return UrlGuard.from_settings(load_settings())


def _ids(values: OrgIds) -> list[str]:
    return [str(value) for value in values]


def _uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def create_endpoint(
    conn: Conn,
    org_ids: OrgIds,
    org_id: str | uuid.UUID,
    url: str,
    event_types: Sequence[str] = (),
    *,
    description: str = "",
    guard: UrlGuard | None = None,
) -> tuple[dict[str, Any], str] | None:
    """Register an endpoint for `org_id`; returns (endpoint, secret) — the secret only here —
    or None when org_id is not among org_ids. InvalidEndpoint for a refused URL or filter."""
    org = _uuid(org_id)
    if org is None or org not in _ids(org_ids):
        return None
    try:
        types = payload.check_event_types(list(event_types))
    except ValueError as error:
        raise InvalidEndpoint(str(error)) from None
    if len(description) > 500:
        raise InvalidEndpoint("the description is longer than 500 characters")
    (guard or default_guard()).check(url)
    count = conn.execute(
        "SELECT count(*) AS n FROM webhook_endpoint WHERE org_id = %s AND deleted_at IS NULL",
        (org,),
    ).fetchone()
    if count and count["n"] >= MAX_ENDPOINTS_PER_ORG:
        raise InvalidEndpoint(f"an org may have at most {MAX_ENDPOINTS_PER_ORG} endpoints")
    secret = signing.generate_secret()
    row = conn.execute(
        "INSERT INTO webhook_endpoint (org_id, url, event_types, description, secret)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {ENDPOINT_COLUMNS}",
        (org, url, types, description, secret),
    ).fetchone()
    assert row is not None
    return row, secret


def list_endpoints(conn: Conn, org_ids: OrgIds) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint"
        " WHERE org_id = ANY(%s::uuid[]) AND deleted_at IS NULL ORDER BY created_at, id",
        (_ids(org_ids),),
    ).fetchall()


def get_endpoint(conn: Conn, org_ids: OrgIds, endpoint_id: Any) -> dict[str, Any] | None:
    endpoint = _uuid(endpoint_id)
    if endpoint is None:
        return None
    return conn.execute(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint"
        " WHERE id = %s AND org_id = ANY(%s::uuid[]) AND deleted_at IS NULL",
        (endpoint, _ids(org_ids)),
    ).fetchone()


FAIL_PENDING = """
UPDATE webhook_delivery SET status = 'failed', next_attempt_at = NULL, last_error = %s,
       updated_at = now()
WHERE endpoint_id = %s AND status = 'pending'
"""


def delete_endpoint(conn: Conn, org_ids: OrgIds, endpoint_id: Any) -> bool:
    """Stop delivering to an endpoint for good (kept, marked deleted, for its history)."""
    if get_endpoint(conn, org_ids, endpoint_id) is None:
        return False
    conn.execute(
        "UPDATE webhook_endpoint SET deleted_at = now(), enabled = false,"
        " disabled_reason = 'deleted', disabled_at = now(), updated_at = now() WHERE id = %s",
        (str(endpoint_id),),
    )
    conn.execute(FAIL_PENDING, ("endpoint deleted", str(endpoint_id)))
    return True


def rotate_secret(
    conn: Conn,
    org_ids: OrgIds,
    endpoint_id: Any,
    *,
    grace_seconds: float | None = None,
) -> tuple[dict[str, Any], str] | None:
    """A new secret; the old one keeps signing for the grace period, so deliveries carry
    two signatures until the receiver has switched. Returns (endpoint, new secret)."""
    if get_endpoint(conn, org_ids, endpoint_id) is None:
        return None
    grace = default_guard().secret_grace_seconds if grace_seconds is None else grace_seconds
    secret = signing.generate_secret()
    row = conn.execute(
        "UPDATE webhook_endpoint SET previous_secret = secret, secret = %s,"
        " previous_secret_until = now() + make_interval(secs => %s), updated_at = now()"
        f" WHERE id = %s RETURNING {ENDPOINT_COLUMNS}",
        (secret, float(grace), str(endpoint_id)),
    ).fetchone()
    assert row is not None
    return row, secret


def disable(conn: Conn, endpoint_id: str, reason: str) -> bool:
    """Disable an enabled endpoint, fail its pending deliveries and record endpoint.disabled
    (all in the caller's transaction). False when it was not enabled."""
    row = conn.execute(
        "UPDATE webhook_endpoint SET enabled = false, disabled_reason = %s,"
        " disabled_at = now(), updated_at = now()"
        " WHERE id = %s AND enabled AND deleted_at IS NULL RETURNING org_id::text AS org_id, url",
        (reason[:300], endpoint_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute(FAIL_PENDING, ("endpoint disabled: " + reason[:250], endpoint_id))
    events.record(
        conn,
        "endpoint.disabled",
        org_id=row["org_id"],
        data={"endpoint_id": endpoint_id, "reason": reason[:300]},
    )
    return True


def disable_endpoint(
    conn: Conn, org_ids: OrgIds, endpoint_id: Any, reason: str = "disabled by the org"
) -> dict[str, Any] | None:
    if get_endpoint(conn, org_ids, endpoint_id) is None:
        return None
    disable(conn, str(endpoint_id), reason)
    return get_endpoint(conn, org_ids, endpoint_id)


def enable_endpoint(
    conn: Conn, org_ids: OrgIds, endpoint_id: Any, *, guard: UrlGuard | None = None
) -> dict[str, Any] | None:
    """Deliver again (after a 410 or a long outage); the URL is vetted again first. Failed
    deliveries stay failed: `recover` re-queues a time window of them."""
    endpoint = get_endpoint(conn, org_ids, endpoint_id)
    if endpoint is None:
        return None
    (guard or default_guard()).check(endpoint["url"])
    return conn.execute(
        "UPDATE webhook_endpoint SET enabled = true, disabled_reason = NULL, disabled_at = NULL,"
        f" failing_since = NULL, updated_at = now() WHERE id = %s RETURNING {ENDPOINT_COLUMNS}",
        (endpoint["id"],),
    ).fetchone()


def list_deliveries(
    conn: Conn,
    org_ids: OrgIds,
    endpoint_id: Any,
    limit: int = 100,
    status: str | None = None,
) -> list[dict[str, Any]] | None:
    """The endpoint's deliveries, newest first; None when the endpoint is not visible."""
    if get_endpoint(conn, org_ids, endpoint_id) is None:
        return None
    return conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_delivery WHERE endpoint_id = %s"
        " AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, event_id DESC LIMIT %s",
        (str(endpoint_id), status, status, max(1, min(int(limit), MAX_LIST))),
    ).fetchall()


def get_delivery(conn: Conn, org_ids: OrgIds, delivery_id: Any) -> dict[str, Any] | None:
    """One delivery with its attempts (status, latency, response excerpt), oldest first."""
    delivery = _uuid(delivery_id)
    if delivery is None:
        return None
    row = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_delivery"
        " WHERE id = %s AND org_id = ANY(%s::uuid[])",
        (delivery, _ids(org_ids)),
    ).fetchone()
    if row is None:
        return None
    row["attempts_made"] = conn.execute(
        "SELECT attempted_at, address, status_code, duration_ms, error, response_excerpt"
        " FROM webhook_attempt WHERE delivery_id = %s ORDER BY id",
        (delivery,),
    ).fetchall()
    return row


REQUEUE = """
UPDATE webhook_delivery SET status = 'pending', attempts = 0, next_attempt_at = now(),
       delivered_at = NULL, updated_at = now()
"""


def redeliver(conn: Conn, org_ids: OrgIds, delivery_id: Any) -> dict[str, Any] | None:
    """Send one delivery again (delivered or failed), same body and webhook-id, with a fresh
    retry schedule. None when the delivery is not visible."""
    found = get_delivery(conn, org_ids, delivery_id)
    if found is None:
        return None
    return conn.execute(
        REQUEUE + f" WHERE id = %s RETURNING {DELIVERY_COLUMNS}", (found["id"],)
    ).fetchone()


def recover(
    conn: Conn,
    org_ids: OrgIds,
    endpoint_id: Any,
    since: datetime,
    until: datetime | None = None,
) -> int | None:
    """Re-queue every failed delivery of the endpoint whose event happened in [since, until);
    returns how many, or None when the endpoint is not visible."""
    if get_endpoint(conn, org_ids, endpoint_id) is None:
        return None
    cursor = conn.execute(
        REQUEUE + " WHERE endpoint_id = %s AND status = 'failed' AND event_occurred_at >= %s"
        " AND (%s::timestamptz IS NULL OR event_occurred_at < %s)",
        (str(endpoint_id), since, until, until),
    )
    return cursor.rowcount
