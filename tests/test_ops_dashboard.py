"""The Grafana dashboard asks only for metrics that exist (exported at scrape time or recorded
by a component), so a renamed metric cannot leave a silently empty panel."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_ops_alerts import SCRAPE_TIME_NAMES, metric_names, source_recorded_names

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "orderflow_ingest/ops/dashboards/orderflow-ingest.json"
)


def _queries() -> list[tuple[str, str]]:
    data = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"]) for panel in data["panels"] for target in panel["targets"]
    ]


def test_every_dashboard_query_names_metrics_we_export() -> None:
    known = SCRAPE_TIME_NAMES | source_recorded_names()
    queries = _queries()
    assert len(queries) >= 10
    for title, expr in queries:
        names = metric_names(expr)
        assert names, title
        assert names <= known, f"{title!r} asks for {names - known}"


def test_the_dashboard_covers_intake_drain_queue_lag_documents_errors_and_webhooks() -> None:
    used = set().union(*(metric_names(expr) for _title, expr in _queries()))
    for name in (
        "orderflow_milter_decisions_total",
        "smtp_emails_received_total",
        "orderflow_postfix_queue_messages",
        "orderflow_ingest_lag_seconds",
        "orderflow_documents_extracted_total",
        "smtp_processing_errors_total",
        "orderflow_webhook_deliveries_total",
    ):
        assert name in used, name
