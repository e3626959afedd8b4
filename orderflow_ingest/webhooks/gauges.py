"""Webhook gauges the exporter reads at scrape time (ops/collector.py calls these).

orderflow_webhook_oldest_undelivered_seconds: age of the oldest event still waiting for a
delivery to an enabled endpoint (0 when none) — the "are receivers getting our events" number.
orderflow_webhook_deliveries_pending: deliveries waiting, due or scheduled for a retry.
orderflow_webhook_fanout_age_seconds: time since a dispatcher last read the event feed; it
grows only when no dispatcher runs (or the database refuses it).
orderflow_webhook_endpoints: endpoints by state (enabled, disabled).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

WEBHOOK_SQL = """
SELECT
  (SELECT coalesce(extract(epoch FROM now() - min(d.event_occurred_at)), 0)::float8
     FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND e.enabled AND e.deleted_at IS NULL) AS oldest_seconds,
  (SELECT count(*) FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND e.enabled AND e.deleted_at IS NULL) AS pending,
  (SELECT extract(epoch FROM now() - updated_at)::float8
     FROM webhook_dispatch_state WHERE name = 'fanout') AS fanout_age_seconds,
  (SELECT count(*) FROM webhook_endpoint WHERE enabled AND deleted_at IS NULL) AS enabled,
  (SELECT count(*) FROM webhook_endpoint WHERE NOT enabled AND deleted_at IS NULL) AS disabled
"""


def webhook_families(row: dict[str, Any]) -> list[Metric]:
    endpoints = GaugeMetricFamily(
        "orderflow_webhook_endpoints", "Webhook endpoints by state.", labels=["state"]
    )
    endpoints.add_metric(["enabled"], float(row["enabled"]))
    endpoints.add_metric(["disabled"], float(row["disabled"]))
    return [
        GaugeMetricFamily(
            "orderflow_webhook_oldest_undelivered_seconds",
            "Age of the oldest event not yet delivered to an enabled endpoint (0 when none).",
            value=float(row["oldest_seconds"] or 0.0),
        ),
        GaugeMetricFamily(
            "orderflow_webhook_deliveries_pending",
            "Webhook deliveries waiting for an attempt or a retry (enabled endpoints).",
            value=float(row["pending"]),
        ),
        GaugeMetricFamily(
            "orderflow_webhook_fanout_age_seconds",
            "Seconds since a webhook dispatcher last read the event feed.",
            value=float(row["fanout_age_seconds"] or 0.0),
        ),
        endpoints,
    ]
