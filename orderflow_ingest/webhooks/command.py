"""`orderflow-ingest webhook ...` (endpoints and deliveries) and `webhook-dispatcher`.

The operator's view: every org is visible (org_ids = all orgs, or the one --org names).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit

webhook_app = typer.Typer(
    help="Webhook endpoints and deliveries (docs/webhooks.md).", no_args_is_help=True
)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


def _org_ids(conn: Any, slug: str | None) -> list[str]:
    if slug is None:
        return [row["id"] for row in conn.execute("SELECT id::text AS id FROM org").fetchall()]
    row = conn.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug.lower(),)).fetchone()
    if row is None:
        fail(f"no org {slug}")
    return [row["id"]]


def _endpoint_text(row: dict[str, Any]) -> str:
    state = "enabled" if row["enabled"] else f"disabled ({row['disabled_reason']})"
    types = ",".join(row["event_types"]) or "*"
    return f"{row['id']}\t{state}\t{types}\t{row['url']}"


OrgOption = Annotated[str | None, typer.Option("--org", help="Org slug (default: every org).")]


@webhook_app.command("create")
def create(
    org: Annotated[str, typer.Option("--org", help="Org slug the endpoint belongs to.")],
    url: str,
    types: Annotated[
        str, typer.Option("--types", help="Comma-separated event types (default: all).")
    ] = "",
    description: Annotated[str, typer.Option(help="A note for people.")] = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register an endpoint; prints its signing secret once (whsec_...).

    Example: orderflow-ingest webhook create --org acme https://erp.example.com/hooks
    --types message.parsed,document.created
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.webhooks import endpoints

    settings = settings_or_exit(config)
    guard = endpoints.UrlGuard.from_settings(settings)
    with connect(settings.database_url) as conn:
        org_ids = _org_ids(conn, org)
        try:
            made = endpoints.create_endpoint(
                conn,
                org_ids,
                org_ids[0],
                url,
                [item for item in types.split(",") if item.strip()],
                description=description,
                guard=guard,
            )
        except endpoints.InvalidEndpoint as error:
            fail(str(error), 2)
        conn.commit()
    assert made is not None
    row, secret = made
    _emit({**row, "secret": secret}, as_json, f"{_endpoint_text(row)}\nsecret: {secret}")


@webhook_app.command("list")
def list_(org: OrgOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Endpoints: id, state, event types, URL.

    Example: orderflow-ingest webhook list --org acme
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.webhooks import endpoints

    with connect(settings_or_exit(config).database_url) as conn:
        rows = endpoints.list_endpoints(conn, _org_ids(conn, org))
    _emit(rows, as_json, "\n".join(_endpoint_text(row) for row in rows) or "no endpoints")


def _one(action: str, endpoint_id: str, config: str | None, as_json: bool, **options: Any) -> None:
    from orderflow_ingest.db import connect
    from orderflow_ingest.webhooks import endpoints

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        org_ids = _org_ids(conn, None)
        secret = None
        try:
            if action == "rotate":
                made = endpoints.rotate_secret(
                    conn, org_ids, endpoint_id, grace_seconds=settings.webhook_secret_grace
                )
                row, secret = made if made else (None, None)
            elif action == "enable":
                row = endpoints.enable_endpoint(
                    conn, org_ids, endpoint_id, guard=endpoints.UrlGuard.from_settings(settings)
                )
            elif action == "disable":
                row = endpoints.disable_endpoint(conn, org_ids, endpoint_id, **options)
            elif action == "delete":
                row = endpoints.get_endpoint(conn, org_ids, endpoint_id)
                endpoints.delete_endpoint(conn, org_ids, endpoint_id)
            else:
                row = endpoints.get_endpoint(conn, org_ids, endpoint_id)
        except endpoints.InvalidEndpoint as error:
            fail(str(error), 2)
        conn.commit()
    if row is None:
        fail(f"no endpoint {endpoint_id}")
    data = {**row, "secret": secret} if secret else row
    text = _endpoint_text(row) + (f"\nsecret: {secret}" if secret else "")
    _emit(data, as_json, "deleted " + text if action == "delete" else text)


@webhook_app.command("show")
def show(endpoint_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One endpoint."""
    _one("show", endpoint_id, config, as_json)


@webhook_app.command("rotate-secret")
def rotate(endpoint_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """New signing secret; the old one keeps signing for ORDERFLOW_WEBHOOK_SECRET_GRACE.

    Example: orderflow-ingest webhook rotate-secret 5b0e...
    """
    _one("rotate", endpoint_id, config, as_json)


@webhook_app.command("enable")
def enable(endpoint_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Deliver to a disabled endpoint again (its URL is vetted again)."""
    _one("enable", endpoint_id, config, as_json)


@webhook_app.command("disable")
def disable(
    endpoint_id: str,
    reason: Annotated[str, typer.Option(help="Why (shown with the endpoint).")] = "operator",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop delivering to an endpoint; pending deliveries become failed (see `recover`)."""
    _one("disable", endpoint_id, config, as_json, reason=reason)


@webhook_app.command("delete")
def delete(endpoint_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Delete an endpoint (its delivery history is kept)."""
    _one("delete", endpoint_id, config, as_json)


@webhook_app.command("deliveries")
def deliveries(
    endpoint_id: str,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """An endpoint's deliveries: id, status, attempts, event type, last status/error.

    Example: orderflow-ingest webhook deliveries 5b0e... --status failed
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.webhooks import endpoints

    with connect(settings_or_exit(config).database_url) as conn:
        rows = endpoints.list_deliveries(conn, _org_ids(conn, None), endpoint_id, limit, status)
    if rows is None:
        fail(f"no endpoint {endpoint_id}")
    lines = [
        f"{r['id']}\t{r['status']}\t{r['total_attempts']}\t{r['event_type']}\t{r['webhook_id']}"
        f"\t{r['last_status_code'] or ''}\t{r['last_error'] or ''}"
        for r in rows
    ]
    _emit(rows, as_json, "\n".join(lines) or "no deliveries")


@webhook_app.command("redeliver")
def redeliver(delivery_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Send one delivery again (same body and webhook-id, fresh retry schedule)."""
    from orderflow_ingest.db import connect
    from orderflow_ingest.webhooks import endpoints

    with connect(settings_or_exit(config).database_url) as conn:
        row = endpoints.redeliver(conn, _org_ids(conn, None), delivery_id)
        conn.commit()
    if row is None:
        fail(f"no delivery {delivery_id}")
    _emit(row, as_json, f"queued {row['id']} ({row['webhook_id']})")


@webhook_app.command("recover")
def recover(
    endpoint_id: str,
    since: Annotated[str, typer.Option(help="Start: 24h, yesterday, 2024-05-01T10:00.")],
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-queue every failed delivery of an endpoint whose event happened in the window.

    Example: orderflow-ingest webhook recover 5b0e... --since 2d
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.ops.timeparse import parse_when
    from orderflow_ingest.webhooks import endpoints

    try:
        start = parse_when(since)
        end = parse_when(until) if until else None
    except ValueError as error:
        fail(str(error), 2)
    with connect(settings_or_exit(config).database_url) as conn:
        count = endpoints.recover(conn, _org_ids(conn, None), endpoint_id, start, end)
        conn.commit()
    if count is None:
        fail(f"no endpoint {endpoint_id}")
    _emit({"requeued": count}, as_json, f"requeued {count} deliveries")


def dispatcher(config: ConfigOption = None) -> None:
    """Deliver webhooks: fan the event log out to endpoints, attempt, retry (long-running).

    Several may run on several hosts. Example: orderflow-ingest webhook-dispatcher
    """
    from orderflow_ingest.webhooks.dispatcher import serve

    sys.exit(serve(settings_or_exit(config)))


def register(app: typer.Typer) -> None:
    """Add `webhook ...` and `webhook-dispatcher` to the CLI."""
    app.add_typer(webhook_app, name="webhook")
    app.command("webhook-dispatcher")(dispatcher)
