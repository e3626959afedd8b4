"""What the webhook tests share: fast settings for the stack, a fresh org per test, an
in-process dispatcher, and queries that read delivery state."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orderflow_ingest import db, events, orgs
from orderflow_ingest.settings import load_settings
from orderflow_ingest.webhooks import endpoints
from orderflow_ingest.webhooks.dispatcher import Dispatcher

# Seconds, not hours: the schedule's shape is tested in test_webhooks_signing.py.
FAST = {
    "ORDERFLOW_WEBHOOK_ALLOW": "127.0.0.1/32",
    "ORDERFLOW_WEBHOOK_REQUIRE_HTTPS": "false",
    "ORDERFLOW_WEBHOOK_RETRY_SCHEDULE": "0.2s,0.2s,0.2s,0.2s",
    "ORDERFLOW_WEBHOOK_JITTER": "0",
    "ORDERFLOW_WEBHOOK_POLL_INTERVAL": "0.05",
    "ORDERFLOW_WEBHOOK_CONNECT_TIMEOUT": "2",
    "ORDERFLOW_WEBHOOK_TIMEOUT": "5",
    "ORDERFLOW_WEBHOOK_CONCURRENCY": "4",
    "ORDERFLOW_API_BASE_URL": "https://api.orderflow.test",
}


def webhook_settings(stack: Any, **overrides: str) -> Any:
    values = {**FAST, **{f"ORDERFLOW_{k.upper()}": v for k, v in overrides.items()}}
    return load_settings(str(stack.config_path), environ=values)


def webhook_env(stack: Any, **overrides: str) -> dict[str, str]:
    """Environment for a dispatcher subprocess with the same settings."""
    values = {**FAST, **{f"ORDERFLOW_{k.upper()}": v for k, v in overrides.items()}}
    return {"ORDERFLOW_CONFIG": str(stack.config_path), **values}


def new_org(settings: Any) -> str:
    """A fresh org per test: its endpoints see only its own events."""
    with db.connect(settings.database_url) as conn:
        org = orgs.add_org(conn, "wh-" + secrets.token_hex(4), "webhook test org")
        conn.commit()
    return str(org["id"])


def add_endpoint(
    settings: Any, org_id: str, url: str, types: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str]:
    with db.connect(settings.database_url) as conn:
        made = endpoints.create_endpoint(
            conn, [org_id], org_id, url, types, guard=endpoints.UrlGuard.from_settings(settings)
        )
        conn.commit()
    assert made is not None
    return made


def record_events(
    settings: Any, org_id: str, count: int = 1, kind: str = "message.parsed", **ids: Any
) -> list[int]:
    with db.connect(settings.database_url) as conn:
        made = [events.record(conn, kind, org_id=org_id, **ids) for _ in range(count)]
        conn.commit()
    return made


def drop_endpoints(settings: Any, org_id: str) -> None:
    """Teardown: no later test's dispatcher keeps retrying this test's receivers."""
    with db.connect(settings.database_url) as conn:
        for endpoint in endpoints.list_endpoints(conn, [org_id]):
            endpoints.delete_endpoint(conn, [org_id], endpoint["id"])
        conn.commit()


def query(settings: Any, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with db.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def deliveries(settings: Any, endpoint_id: str) -> list[dict[str, Any]]:
    return query(
        settings,
        "SELECT * FROM webhook_delivery WHERE endpoint_id = %s ORDER BY event_id",
        (endpoint_id,),
    )


def attempts(settings: Any, endpoint_id: str) -> list[dict[str, Any]]:
    return query(
        settings,
        "SELECT a.* FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id"
        " WHERE d.endpoint_id = %s ORDER BY a.id",
        (endpoint_id,),
    )


def org_events(settings: Any, org_id: str, kind: str) -> list[dict[str, Any]]:
    return query(
        settings, "SELECT * FROM event WHERE org_id = %s AND type = %s ORDER BY id", (org_id, kind)
    )


@contextmanager
def running_dispatcher(settings: Any) -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(settings)
    thread = threading.Thread(target=dispatcher.run, name="test-dispatcher", daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "dispatcher did not stop"
