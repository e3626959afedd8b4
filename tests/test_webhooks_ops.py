"""Operating webhooks: the CLI, `doctor`'s line, the exporter's gauges, and org scoping of
the endpoint API the HTTP API mounts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support_wait import wait_for
from webhook_receiver import Receiver
from webhook_support import (
    add_endpoint,
    deliveries,
    drop_endpoints,
    new_org,
    record_events,
    running_dispatcher,
    webhook_env,
    webhook_settings,
)

from orderflow_ingest import db
from orderflow_ingest.webhooks import endpoints
from orderflow_ingest.webhooks.health import allow_list_problem, check_webhooks


def test_allow_list_wider_than_a_network_is_flagged() -> None:
    assert allow_list_problem(("127.0.0.1/32", "10.20.0.0/16", "erp.internal")) is None
    assert allow_list_problem(("0.0.0.0/0",)) is not None
    assert allow_list_problem(("::/0",)) is not None


@pytest.fixture
def wh(stack: Any) -> Any:
    return webhook_settings(stack)


@pytest.fixture
def org(wh: Any) -> Iterator[str]:
    org_id = new_org(wh)
    yield org_id
    drop_endpoints(wh, org_id)


def cli(stack: Any, *args: str) -> Any:
    env = {**os.environ, **webhook_env(stack)}
    result = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.entry", "webhook", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.stack
def test_cli_creates_lists_redelivers_and_recovers(stack: Any, wh: Any, org: str) -> None:
    receiver = Receiver()
    try:
        with db.connect(wh.database_url) as conn:
            row = conn.execute("SELECT slug FROM org WHERE id = %s", (org,)).fetchone()
        slug = row["slug"]
        made = cli(stack, "create", "--org", slug, receiver.url(), "--types", "message.*")
        assert made["secret"].startswith("whsec_")
        assert [e["id"] for e in cli(stack, "list", "--org", slug)] == [made["id"]]
        record_events(wh, org)
        with running_dispatcher(wh):
            wait_for(lambda: receiver.requests, 30, "the webhook")
            [delivery] = cli(stack, "deliveries", made["id"])
            wait_for(lambda: deliveries(wh, made["id"])[0]["status"] == "delivered", 30)
            cli(stack, "redeliver", delivery["id"])
            wait_for(lambda: len(receiver.requests) == 2, 30, "the redelivery")
            assert cli(stack, "recover", made["id"], "--since", "1h") == {"requeued": 0}
        rotated = cli(stack, "rotate-secret", made["id"])
        assert rotated["secret"] != made["secret"] and rotated["previous_secret_active"]
        assert cli(stack, "disable", made["id"])["enabled"] is False
        assert cli(stack, "enable", made["id"])["enabled"] is True
        assert len(set(receiver.ids())) == 1
    finally:
        receiver.close()


@pytest.mark.stack
def test_cli_refuses_an_internal_url_without_the_allow_list(stack: Any, org: str) -> None:
    env = {**os.environ, **webhook_env(stack, webhook_allow="")}
    result = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.entry", "webhook", "create", "--org", "acme",
         "http://169.254.169.254/latest/meta-data/"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "internal address" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.stack
def test_another_orgs_endpoints_and_deliveries_are_invisible(wh: Any, org: str) -> None:
    other = new_org(wh)
    try:
        receiver = Receiver()
        endpoint, _secret = add_endpoint(wh, org, "http://127.0.0.1:9/hook")
        record_events(wh, org)
        with db.connect(wh.database_url) as conn:
            from orderflow_ingest.webhooks import fanout

            fanout.fan_out_all(conn, "")
            [delivery] = endpoints.list_deliveries(conn, [org], endpoint["id"]) or [None]
            assert delivery is not None
            mine, theirs = [org], [other]
            since = datetime.now(UTC) - timedelta(hours=1)
            assert endpoints.get_endpoint(conn, theirs, endpoint["id"]) is None
            assert endpoints.list_endpoints(conn, theirs) == []
            assert endpoints.list_deliveries(conn, theirs, endpoint["id"]) is None
            assert endpoints.get_delivery(conn, theirs, delivery["id"]) is None
            assert endpoints.redeliver(conn, theirs, delivery["id"]) is None
            assert endpoints.recover(conn, theirs, endpoint["id"], since) is None
            assert endpoints.rotate_secret(conn, theirs, endpoint["id"]) is None
            assert endpoints.disable_endpoint(conn, theirs, endpoint["id"]) is None
            assert endpoints.enable_endpoint(conn, theirs, endpoint["id"]) is None
            assert endpoints.delete_endpoint(conn, theirs, endpoint["id"]) is False
            assert endpoints.create_endpoint(conn, theirs, org, "https://x.example/") is None
            assert endpoints.get_endpoint(conn, theirs, "not-a-uuid") is None
            # ...and the owner still sees everything.
            assert endpoints.get_endpoint(conn, mine, endpoint["id"]) is not None
            assert endpoints.get_delivery(conn, mine, delivery["id"]) is not None
            conn.rollback()
        receiver.close()
    finally:
        drop_endpoints(wh, other)


@pytest.mark.stack
def test_doctor_and_exporter_report_the_webhook_backlog(stack: Any, wh: Any, org: str) -> None:
    from orderflow_ingest.ops.exporter import make_collector

    add_endpoint(wh, org, "http://127.0.0.1:9/down")  # nothing listens: stays pending
    record_events(wh, org)
    with db.connect(wh.database_url) as conn:
        from orderflow_ingest.webhooks import fanout

        fanout.fan_out_all(conn, "")
    check = check_webhooks(wh)
    assert check.status in ("ok", "warn")
    assert "deliveries pending" in check.detail
    collector = make_collector(wh)
    try:
        families = {family.name: family for family in collector.collect()}
    finally:
        collector._sources.database.close()  # the exporter keeps it between scrapes
        collector._sources.redis().close()
    oldest = families["orderflow_webhook_oldest_undelivered_seconds"].samples[0].value
    pending = families["orderflow_webhook_deliveries_pending"].samples[0].value
    assert oldest >= 0 and pending >= 1
    assert families["orderflow_webhook_fanout_age_seconds"].samples[0].value < 60


@pytest.mark.stack
def test_exporter_serves_delivery_counts_and_attempt_latency(stack: Any, wh: Any, org: str) -> None:
    from redis import Redis

    from orderflow_ingest import metrics
    from orderflow_ingest.ops.exporter import make_collector

    receiver = Receiver()
    redis_client = Redis.from_url(wh.redis_url)
    metrics.configure(redis_client, flush_interval=None, host=wh.metrics_host)
    try:
        add_endpoint(wh, org, receiver.url())
        record_events(wh, org)
        with running_dispatcher(wh):
            wait_for(lambda: receiver.requests, 30, "the webhook")
            wait_for(metrics.flush, 30, "a metrics flush")
        collector = make_collector(wh)
        try:
            families = {family.name: family for family in collector.collect()}
        finally:
            collector._sources.database.close()
            collector._sources.redis().close()
    finally:
        metrics.flush()
        metrics.configure(None, flush_interval=None)
        redis_client.close()
        receiver.close()
    delivered = [
        sample.value
        for sample in families["orderflow_webhook_deliveries"].samples
        if sample.labels.get("outcome") == "delivered"
    ]
    assert delivered and delivered[0] >= 1
    assert any(
        sample.name == "orderflow_webhook_attempt_seconds_count" and sample.value >= 1
        for sample in families["orderflow_webhook_attempt_seconds"].samples
    )
