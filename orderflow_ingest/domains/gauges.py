"""The exporter's custom-domain gauge: how many domains are in each state, read at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from orderflow_ingest.domains.policy import STATES

DOMAIN_SQL = (
    "SELECT state, count(*)::float8 AS domains FROM custom_domain"
    " WHERE removed_at IS NULL GROUP BY state"
)


def domain_families(rows: list[dict[str, Any]]) -> list[Metric]:
    """orderflow_custom_domains{state}: every state, 0 when none is in it (alerts need it)."""
    by_state = {row["state"]: float(row["domains"]) for row in rows}
    gauge = GaugeMetricFamily(
        "orderflow_custom_domains",
        "Custom domains by state (pending, verified, mx_lost, suspended).",
        labels=["state"],
    )
    for state in STATES:
        gauge.add_metric([state], by_state.get(state, 0.0))
    return [gauge]
