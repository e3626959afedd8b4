"""What the webhook tests share: fast settings for the stack, a fresh org per test, an
in-process dispatcher, and queries that read delivery state."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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


def dispatcher_process(stack: Any, **overrides: str) -> subprocess.Popen[bytes]:
    """`orderflow-ingest webhook-dispatcher` as its own process (killable with SIGKILL)."""
    env = {**os.environ, **webhook_env(stack, **overrides)}
    return subprocess.Popen(
        [sys.executable, "-m", "orderflow_ingest.entry", "webhook-dispatcher"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal and reap; a dispatcher that ignores SIGTERM is killed (never leaked) and fails
    the test."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"dispatcher {process.pid} did not stop on signal {sig}") from None


DELIVERABLE_EVENTS = """
SELECT e.id FROM event e JOIN webhook_endpoint w ON w.org_id = e.org_id
WHERE w.id = %s AND e.occurred_at >= w.created_at
  AND e.type NOT IN ('webhook.delivered', 'webhook.failed')
"""


@dataclass
class OutageFigures:
    endpoints: int = 0
    events: int = 0  # deliverable events over all endpoints (one per endpoint and event)
    requests: int = 0  # requests the receiver answered 2xx or saw while up
    duplicates: int = 0  # requests beyond the first for one (endpoint, webhook-id)
    lost: int = 0  # deliverable events never received
    bad_signatures: int = 0
    down_seconds: float = 0.0
    drain_seconds: float | None = None  # receiver back up -> last event received
    killed_dispatchers: int = 0

    def line(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in asdict(self).items())


def receiver_outage_under_load(
    stack: Any,
    org_ids: list[str],
    load: Callable[[], None],
    down_seconds: float,
    drain_timeout: float = 180,
    kill_a_dispatcher: bool = True,
) -> OutageFigures:
    """The receiver is down for `down_seconds` while `load` makes events and a dispatcher is
    SIGKILLed and replaced; then it comes back. Returns what arrived against what should have.
    """
    from standardwebhooks import Webhook
    from support_wait import poll_until
    from webhook_receiver import Receiver

    # Retries every few seconds through the outage; never disabled during it.
    retry = ",".join(["1s", "2s", "4s"] + ["5s"] * (int(down_seconds / 5) + 20))
    overrides = {"webhook_retry_schedule": retry, "webhook_timeout": "3"}
    settings = webhook_settings(stack, **overrides)
    figures = OutageFigures(endpoints=len(org_ids))
    receiver = Receiver()
    made = {org: add_endpoint(settings, org, receiver.url(f"/hook/{org}")) for org in org_ids}
    dispatchers = [dispatcher_process(stack, **overrides) for _ in range(2)]
    try:
        receiver.down()
        went_down = time.monotonic()
        loader = threading.Thread(target=load, name="webhook-load")
        loader.start()
        if kill_a_dispatcher:
            # Mid-outage: one dispatcher dies hard, a new one takes its place.
            poll_until(lambda: bool(attempts(settings, made[org_ids[0]][0]["id"])), 60, 0.2)
            stop_process(dispatchers[0], signal.SIGKILL)
            figures.killed_dispatchers += 1
            dispatchers[0] = dispatcher_process(stack, **overrides)
        loader.join()
        remaining = down_seconds - (time.monotonic() - went_down)
        if remaining > 0:
            threading.Event().wait(remaining)  # the outage itself: the scenario's parameter
        figures.down_seconds = round(time.monotonic() - went_down, 1)
        receiver.up()

        def expected() -> dict[str, set[str]]:
            return {
                org: {
                    f"evt_{row['id']}" for row in query(settings, DELIVERABLE_EVENTS, (ep["id"],))
                }
                for org, (ep, _secret) in made.items()
            }

        def received() -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {org: [] for org in org_ids}
            for request in list(receiver.requests):
                seen[request.path.rsplit("/", 1)[-1]].append(request.webhook_id)
            return seen

        def complete() -> bool:
            seen = received()
            return all(ids <= set(seen[org]) for org, ids in expected().items())

        figures.drain_seconds = poll_until(complete, drain_timeout, 0.5)
        wanted, seen = expected(), received()
        figures.events = sum(len(ids) for ids in wanted.values())
        figures.requests = sum(len(ids) for ids in seen.values())
        figures.lost = sum(len(ids - set(seen[org])) for org, ids in wanted.items())
        figures.duplicates = figures.requests - sum(len(set(ids)) for ids in seen.values())
        for request in receiver.requests:
            secret = made[request.path.rsplit("/", 1)[-1]][1]
            try:
                Webhook(secret).verify(request.body, request.headers)
            except Exception:
                figures.bad_signatures += 1
    finally:
        for process in dispatchers:
            stop_process(process)
        receiver.close()
        for org in org_ids:
            drop_endpoints(settings, org)
    return figures
