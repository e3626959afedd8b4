"""The `doctor` line for webhooks: is a dispatcher reading the feed, how old is the backlog,
are endpoints disabled, is the SSRF allow-list wider than an on-premise network."""

from __future__ import annotations

import ipaddress
from typing import Any

from orderflow_ingest.ops.checks import FAIL, OK, WARN, Check
from orderflow_ingest.webhooks.gauges import WEBHOOK_SQL

STALLED_SECONDS = 300.0
BACKLOG_WARN_SECONDS = 3600.0


def allow_list_problem(allow: tuple[str, ...]) -> str | None:
    """An allow-list entry that opens (nearly) everything defeats the SSRF guard."""
    for item in allow:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            continue
        if network.prefixlen < (8 if network.version == 4 else 32):
            return f"ORDERFLOW_WEBHOOK_ALLOW has {item}: that lets webhooks reach internal hosts"
    return None


def check_webhooks(settings: Any) -> Check:
    from orderflow_ingest.db import connect

    problem = allow_list_problem(tuple(settings.webhook_allow))
    if problem:
        return Check("webhooks", WARN, problem)
    try:
        with connect(settings.database_url, timeout=5) as conn:
            row = conn.execute(WEBHOOK_SQL).fetchone()
    except Exception as error:
        return Check("webhooks", FAIL, f"cannot read webhook state: {type(error).__name__}")
    assert row is not None
    detail = (
        f"{row['enabled']} endpoints enabled, {row['disabled']} disabled;"
        f" {row['pending']} deliveries pending, oldest {row['oldest_seconds']:.0f}s;"
        f" feed read {row['fanout_age_seconds']:.0f}s ago"
    )
    if row["enabled"] and row["fanout_age_seconds"] > STALLED_SECONDS:
        return Check("webhooks", WARN, detail + ": no dispatcher is running (`webhook-dispatcher`)")
    if row["oldest_seconds"] > BACKLOG_WARN_SECONDS or row["disabled"]:
        return Check("webhooks", WARN, detail + ": see `orderflow-ingest webhook list`")
    return Check("webhooks", OK, detail)
