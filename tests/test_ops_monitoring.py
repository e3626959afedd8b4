"""Monitoring without blind spots: every host exports its own counts, and the exporter sees the
S3 bucket, the milter and the delivery service, not only PostgreSQL and Redis.

Real `orderflow-ingest exporter` processes against the stack's Redis, scraped over HTTP.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis import Redis

from orderflow_ingest import metrics
from tests.support_wait import wait_for
from tests.test_ops_exporter import Exporter, free_port, value

pytestmark = pytest.mark.stack


def _exporter(stack: Any, host: str) -> Exporter:
    return Exporter(
        stack,
        {
            "ORDERFLOW_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "ORDERFLOW_METRICS_HOST": host,
        },
    )


def test_two_hosts_on_one_redis_each_export_only_their_own_counts(
    stack: Any, redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sum over instances is the cluster total: a shared hash made each host report it all."""
    monkeypatch.setattr(metrics, "_redis", None)
    monkeypatch.setattr(metrics, "_key", "")
    marker = f"two-hosts-{uuid.uuid4().hex[:8]}"
    for host, amount in (("mx-a", 3), ("mx-b", 5)):
        metrics.configure(redis_conn, flush_interval=None, host=host)
        metrics.count("smtp_processing_errors_total", amount, org_id=marker, error_type="test")
        assert metrics.flush()
    exporters = {host: _exporter(stack, host) for host in ("mx-a", "mx-b")}
    try:
        seen = {
            host: value(
                exporter.scrape()[0],
                "smtp_processing_errors_total",
                org_id=marker,
                error_type="test",
            )
            for host, exporter in exporters.items()
        }
    finally:
        for exporter in exporters.values():
            exporter.stop()
    assert seen == {"mx-a": 3, "mx-b": 5}
    assert sum(seen.values()) == 8


def test_backend_up_covers_s3_the_milter_and_the_delivery_service(stack: Any) -> None:
    exporter = _exporter(stack, "")
    try:
        samples, _ = exporter.scrape()
        assert value(samples, "orderflow_exporter_backend_up", backend="s3") == 1
        assert value(samples, "orderflow_exporter_backend_up", backend="deliver_service") == 1
        # This stack runs without the milter: Postfix would tempfail every message, and the
        # milter's own counters cannot say so. The exporter does.
        assert ("orderflow_exporter_backend_up", frozenset({("backend", "milter")})) in samples
        assert value(samples, "orderflow_exporter_backend_up", backend="milter") == 0

        stack.stop_component("deliver")
        try:

            def service_down() -> bool:
                scraped = exporter.scrape()[0]
                return (
                    value(scraped, "orderflow_exporter_backend_up", backend="deliver_service") == 0
                )

            wait_for(service_down, 30, "backend_up{deliver_service} 0")
        finally:
            stack.start_component("deliver")

        def service_back() -> bool:
            scraped = exporter.scrape()[0]
            return value(scraped, "orderflow_exporter_backend_up", backend="deliver_service") == 1

        wait_for(service_back, 60, "backend_up{deliver_service} 1 again")
    finally:
        exporter.stop()


def test_an_unreachable_bucket_is_backend_down(stack: Any) -> None:
    exporter = Exporter(
        stack,
        {
            "ORDERFLOW_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "ORDERFLOW_S3_BUCKET": "no-such-bucket-" + uuid.uuid4().hex[:8],
        },
    )
    try:
        samples, _ = exporter.scrape()
        assert value(samples, "orderflow_exporter_backend_up", backend="s3") == 0
        assert value(samples, "orderflow_exporter_backend_up", backend="redis") == 1
    finally:
        exporter.stop()


def test_the_smtpd_certificate_expiry_is_exported(stack: Any) -> None:
    """doctor warns before expiry; the alert needs the same fact as a gauge."""
    from orderflow_ingest.ops.collector import postconf_value

    cert = postconf_value(str(stack.postfix_config_dir), "smtpd_tls_cert_file")
    exporter = _exporter(stack, "")
    try:
        samples, _ = exporter.scrape()
    finally:
        exporter.stop()
    assert value(samples, "orderflow_exporter_backend_up", backend="tls") == 1
    left = value(samples, "orderflow_tls_certificate_expiry_seconds", path=cert)
    assert 0 < left <= 3660 * 86400  # the devstack's self-signed certificate is fresh
