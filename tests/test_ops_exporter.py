"""The exporter as Prometheus sees it: scraped over HTTP from the real `orderflow-ingest
exporter` process after real traffic through the stack's Postfix.

The spec's names and labels exactly (FR-014), values that move with the traffic, the
operational gauges, backend outages that show as 0 instead of a failed scrape, and a
listen address that must be loopback.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import send_mail
from ops_support import CLI, env_with, relayed_order, run_worker, wait_for, wait_status
from prometheus_client.parser import text_string_to_metric_families
from samples import address, order_email
from test_ops_alerts import load_rules, metric_names, source_recorded_names

from orderflow_ingest.ops import exporter
from orderflow_ingest.settings import Settings

pytestmark = pytest.mark.stack
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        return response.read().decode()


def parse(text: str) -> tuple[Samples, dict[str, Any]]:
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Exporter:
    def __init__(self, stack: Any, env: dict[str, str] | None = None):
        self.env = env or {}
        listen = self.env.get("ORDERFLOW_METRICS_LISTEN", stack.settings.metrics_listen)
        self.url = f"http://{listen}/metrics"
        self.process = subprocess.Popen(
            [CLI, "exporter", "--config", str(stack.config_path)],
            env=env_with(self.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._answers, 30, f"exporter on {listen}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exporter exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            fetch(self.url)
        except OSError:
            return False
        return True

    def scrape(self) -> tuple[Samples, dict[str, Any]]:
        return parse(fetch(self.url))

    def stop(self) -> bytes:
        self.process.send_signal(signal.SIGTERM)
        _out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return err


@pytest.fixture(scope="module")
def running(stack: Any) -> Iterator[Exporter]:
    process = Exporter(stack)
    yield process
    log = process.stop()
    assert b"Traceback" not in log


@pytest.fixture(scope="module")
def traffic(stack: Any, running: Exporter, settings: Any) -> dict[str, Any]:
    """Three orders for acme (one crossed many relays), one for globex; the workers then run
    with too small a header limit, so the relayed one fails: one processing error."""
    import psycopg
    from psycopg.rows import dict_row

    run_worker(stack)  # the misconfigured worker below must see only these jobs
    before, _ = running.scrape()
    orders = [order_email(), order_email(), relayed_order()]
    for msg in orders:
        send_mail(stack, msg, [address("acme")])
    globex = order_email(to=address("globex"))
    send_mail(stack, globex, [address("globex")])
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        for msg in orders:
            wait_status(db, msg["Message-ID"], ("STORED",))
        wait_status(db, globex["Message-ID"], ("STORED",), slug="globex")
        run_worker(stack, env={"ORDERFLOW_MAX_HEADER_BYTES": "2048"})
        wait_status(db, orders[2]["Message-ID"], ("FAILED",))
        org_ids = {
            row["slug"]: row["id"]
            for row in db.execute("SELECT slug::text AS slug, id::text AS id FROM org").fetchall()
        }
    return {"before": before, "org_ids": org_ids}


def test_spec_metrics_have_their_names_labels_and_move_with_traffic(
    running: Exporter, traffic: dict[str, Any]
) -> None:
    before = traffic["before"]
    acme, globex = traffic["org_ids"]["acme"], traffic["org_ids"]["globex"]

    received = "smtp_emails_received_total"
    errors = "smtp_processing_errors_total"
    duration = "smtp_attachment_extraction_duration_ms"
    # Each process flushes its counts on its own schedule (the delivery service once a
    # second, a worker at the end of each job): wait until every source has reported.
    expected = [
        ((received, {"org_id": acme, "status": "STORED"}), 3),
        ((received, {"org_id": globex, "status": "STORED"}), 1),
        ((errors, {"org_id": acme, "error_type": "unparseable"}), 1),
        ((f"{duration}_count", {}), 3),
        (("orderflow_deliveries_total", {"outcome": "delivered"}), 4),
        (("orderflow_delivery_seconds_count", {}), 4),
        (("orderflow_s3_put_seconds_count", {}), 4),
    ]

    def moved() -> tuple[Samples, dict[str, Any]] | None:
        samples, families = running.scrape()
        done = all(
            value(samples, name, **labels) - value(before, name, **labels) >= least
            for (name, labels), least in expected
        )
        return (samples, families) if done else None

    after, families = wait_for(moved, 30, f"these series to move: {expected}")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert families["smtp_emails_received"].type == "counter"
    assert delta(received, org_id=acme, status="STORED") == 3
    assert delta(received, org_id=globex, status="STORED") == 1
    for sample_name, labels in after:
        if sample_name == received:
            assert {key for key, _ in labels} == {"org_id", "status"}
        if sample_name == "smtp_processing_errors_total":
            assert {key for key, _ in labels} == {"org_id", "error_type"}
    assert delta("smtp_processing_errors_total", org_id=acme, error_type="unparseable") == 1

    assert families[duration].type == "histogram"
    assert delta(f"{duration}_count") >= 3  # the three that parsed (the failed one may too)
    assert value(after, f"{duration}_bucket", le="+Inf") == value(after, f"{duration}_count")
    assert delta(f"{duration}_sum") > 0

    assert delta("orderflow_deliveries_total", outcome="delivered") >= 4
    assert families["orderflow_s3_put_seconds"].type == "histogram"
    assert delta("orderflow_s3_put_seconds_count") >= 4
    assert delta("orderflow_delivery_seconds_count") >= 4


def test_operational_gauges_are_read_at_scrape_time(
    stack: Any, running: Exporter, traffic: dict[str, Any]
) -> None:
    samples, _ = running.scrape()
    for backend in ("redis", "postgres", "postfix", "disk"):
        assert value(samples, "orderflow_exporter_backend_up", backend=backend) == 1, backend
    for queue in ("active", "deferred", "hold", "incoming"):
        assert ("orderflow_postfix_queue_messages", frozenset({("queue", queue)})) in samples
    attachments = stack.settings.attachment_queue
    for queue in (attachments, stack.settings.extraction_queue):
        assert ("orderflow_rq_jobs", frozenset({("queue", queue), ("state", "failed")})) in samples
    # Each document handed downstream is a job waiting there (three parsed, one failed).
    extraction = stack.settings.extraction_queue
    assert value(samples, "orderflow_rq_jobs", queue=extraction, state="queued") >= 3
    assert value(samples, "orderflow_rq_workers", queue=attachments) == 0
    assert ("orderflow_ingest_lag_seconds", frozenset()) in samples
    assert value(samples, "orderflow_messages_pending", status="STORED") >= 0
    spool = frozenset({("purpose", "spool"), ("path", stack.settings.spool_dir)})
    assert samples[("orderflow_disk_free_bytes", spool)] > 0
    assert (
        samples[("orderflow_disk_size_bytes", spool)]
        >= samples[("orderflow_disk_free_bytes", spool)]
    )
    assert any(
        name == "orderflow_disk_free_bytes" and ("purpose", "postfix_queue") in labels
        for name, labels in samples
    )


def test_ingest_lag_and_queue_depth_follow_a_stalled_pipeline(
    stack: Any, running: Exporter, db: Any
) -> None:
    """No worker runs in the session stack: a new message waits STORED and ages."""
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    row = wait_status(db, msg["Message-ID"], ("STORED",))
    attachments = stack.settings.attachment_queue
    time.sleep(1)
    samples, _ = running.scrape()
    waited = (datetime.now(UTC) - row["created_at"]).total_seconds()
    # The lag is the oldest waiting message's age: at least ours (others may be older).
    assert value(samples, "orderflow_ingest_lag_seconds") >= waited - 0.5
    assert value(samples, "orderflow_messages_pending", status="STORED") >= 1
    assert value(samples, "orderflow_rq_jobs", queue=attachments, state="queued") >= 1
    run_worker(stack)
    wait_status(db, msg["Message-ID"], ("PARSED",))
    samples, _ = running.scrape()
    assert value(samples, "orderflow_rq_jobs", queue=attachments, state="queued") == 0


def test_every_metric_the_alert_rules_use_is_exported(
    stack: Any, running: Exporter, traffic: dict[str, Any]
) -> None:
    # A Message-ID conflict (same id, other content): its counter exists once one happened.
    first = order_email()
    send_mail(stack, first, [address("acme")])
    send_mail(stack, order_email(message_id=first["Message-ID"]), [address("acme")])

    def conflict_counted() -> set[str] | None:
        names = {name for name, _labels in running.scrape()[0]}
        return names if "orderflow_message_conflicts_total" in names else None

    exported = wait_for(conflict_counted, 30, "orderflow_message_conflicts_total in a scrape")
    # The session stack runs Postfix without the milter, so the milter's counter cannot
    # appear in this scrape; it must at least be recorded by the milter's code.
    milter_only = {"orderflow_milter_decisions_total"} & source_recorded_names()
    # Nor does it run the webhook dispatcher (its series: tests/test_webhooks_ops.py).
    dispatcher_only = {
        "orderflow_webhook_deliveries_total",
        "orderflow_webhook_attempt_seconds_bucket",
    }
    assert {"orderflow_webhook_deliveries_total", "orderflow_webhook_attempt_seconds"} <= (
        source_recorded_names()
    )
    for rule in load_rules():
        missing = metric_names(rule["expr"]) - exported - {"up"} - milter_only - dispatcher_only
        assert not missing, f"{rule['alert']} uses {missing}, not in a live scrape"


def test_exporter_survives_backends_that_are_down(stack: Any, running: Exporter) -> None:
    # An exporter whose Redis and PostgreSQL are unreachable still answers every scrape.
    dead = Exporter(
        stack,
        {
            "ORDERFLOW_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
            "ORDERFLOW_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        },
    )
    try:
        samples, _ = dead.scrape()
        assert value(samples, "orderflow_exporter_backend_up", backend="redis") == 0
        assert value(samples, "orderflow_exporter_backend_up", backend="postgres") == 0
        assert value(samples, "orderflow_exporter_backend_up", backend="postfix") == 1
        assert ("orderflow_postfix_queue_messages", frozenset({("queue", "deferred")})) in samples
        assert dead.scrape()[0]  # and again: still answering
    finally:
        log = dead.stop()
    # Once per outage, not per scrape (the milter is also down: this stack runs without it).
    downs = [
        json.loads(line)["backend"]
        for line in log.splitlines()
        if b'"exporter.backend_down"' in line
    ]
    assert sorted(downs) == ["milter", "postgres", "redis"]

    # The stack's Redis goes away and comes back: the running exporter follows.
    stack.stop_component("redis")
    try:
        samples, _ = running.scrape()
        assert value(samples, "orderflow_exporter_backend_up", backend="redis") == 0
        assert value(samples, "orderflow_exporter_backend_up", backend="postgres") == 1
    finally:
        stack.start_component("redis")

    def redis_back() -> bool:
        samples, _ = running.scrape()
        return value(samples, "orderflow_exporter_backend_up", backend="redis") == 1

    wait_for(redis_back, 30, "the exporter to see Redis again")


def test_exporter_refuses_a_non_loopback_address(stack: Any) -> None:
    port = free_port()
    result = subprocess.run(
        [CLI, "exporter", "--config", str(stack.config_path)],
        env=env_with({"ORDERFLOW_METRICS_LISTEN": f"0.0.0.0:{port}"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "loopback" in result.stderr
    # Defence in depth: the exporter itself refuses, even given settings that skipped
    # validation, and binds nothing.
    values = stack.settings.as_dict()
    for listen in (f"0.0.0.0:{port}", f"[::]:{port}", f":{port}"):
        values["ORDERFLOW_METRICS_LISTEN"] = listen
        with pytest.raises(exporter.NotLoopback):
            exporter.start(Settings(values, None))
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", port))  # still free: nothing was bound
