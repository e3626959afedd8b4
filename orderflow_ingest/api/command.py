"""CLI of the product layer: `api` (serve), `key create|list|revoke`, `events list|prune`."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit

key_app = typer.Typer(help="API keys: scoped to concrete orgs and permissions.")
events_app = typer.Typer(help="The event log: read the feed, prune past the retention.")


def _print(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


def api(
    config: ConfigOption = None,
    listen: Annotated[
        str | None, typer.Option(help="host:port; default ORDERFLOW_API_LISTEN (loopback).")
    ] = None,
    print_openapi: Annotated[
        bool, typer.Option("--print-openapi", help="Print the OpenAPI document and exit.")
    ] = False,
) -> None:
    """Serve the HTTP API (/v1) on loopback; put a TLS reverse proxy in front (docs/api.md).

    Example: orderflow-ingest api --config /etc/orderflow/ingest.env
    """
    if print_openapi:
        from orderflow_ingest.api.app import openapi_document

        typer.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return
    from orderflow_ingest.api.server import serve
    from orderflow_ingest.settings import is_loopback_listen

    settings = settings_or_exit(config)
    if listen and not is_loopback_listen(listen) and not settings.api_allow_public_bind:
        fail(f"--listen {listen} is not loopback (see ORDERFLOW_API_ALLOW_PUBLIC_BIND)", 78)
    serve(settings, listen)


def _org_ids(conn: Any, slugs: list[str]) -> list[str]:
    from orderflow_ingest.orgs import org_by_slug

    ids = []
    for slug in slugs:
        org = org_by_slug(conn, slug.lower())
        if org is None:
            fail(f"no org {slug}", 1)
        ids.append(str(org["id"]))
    return ids


def _key_text(key: dict[str, Any]) -> str:
    state = "revoked" if key["revoked_at"] else "active"
    return (
        f"{key['id']}\t{key['hint']}…\t{state}\t{key['name']}\torgs={','.join(key['org_ids'])}"
        f"\tpermissions={','.join(key['permissions'])}"
        + (f"\texpires={key['expires_at']}" if key["expires_at"] else "")
    )


@key_app.command("create")
def key_create(
    name: str,
    org: Annotated[list[str], typer.Option("--org", help="Org slug; repeat for several.")],
    permission: Annotated[
        list[str], typer.Option("--permission", "-p", help="Permission; repeat for several.")
    ],
    expires_in_days: Annotated[int | None, typer.Option(help="Expire after N days.")] = None,
    allow_ip: Annotated[
        list[str] | None, typer.Option("--allow-ip", help="Client IP or CIDR; repeatable.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key for the named orgs; prints the secret ONCE (only its hash is kept).

    Example: orderflow-ingest key create erp-sync --org acme -p messages:read -p raw:read
    """
    import getpass
    from datetime import UTC, datetime

    from orderflow_ingest import keys
    from orderflow_ingest.db import connect

    settings = settings_or_exit(config)
    expires = (
        datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days is not None else None
    )
    with connect(settings.database_url) as conn:
        try:
            row, secret = keys.create_key(
                conn,
                name=name,
                org_ids=_org_ids(conn, org),
                permissions=permission,
                created_by=f"cli {getpass.getuser()}",
                expires_at=expires,
                allowed_ips=allow_ip or None,
            )
        except keys.KeyRequestError as error:
            fail(str(error), 2)
        conn.commit()
    _print({**row, "secret": secret}, as_json, f"{_key_text(row)}\nsecret (shown once): {secret}")


@key_app.command("list")
def key_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List keys (never their secrets).

    Example: orderflow-ingest key list
    """
    from orderflow_ingest import keys
    from orderflow_ingest.db import connect

    with connect(settings_or_exit(config).database_url) as conn:
        rows = keys.list_keys(conn)
    _print(rows, as_json, "\n".join(_key_text(row) for row in rows) or "no keys")


@key_app.command("revoke")
def key_revoke(key_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Revoke a key at once (idempotent).

    Example: orderflow-ingest key revoke 6f1c...
    """
    import uuid

    from orderflow_ingest import keys
    from orderflow_ingest.db import connect

    try:
        uuid.UUID(key_id)
    except ValueError:
        fail(f"{key_id!r} is not a key id (see `key list`)", 2)
    with connect(settings_or_exit(config).database_url) as conn:
        row = keys.revoke_key(conn, key_id)
        conn.commit()
    if row is None:
        fail(f"no key {key_id}")
    _print(row, as_json, _key_text(row))


@events_app.command("list")
def events_list(
    after: Annotated[str | None, typer.Option(help="Cursor to resume after.")] = None,
    org: Annotated[list[str] | None, typer.Option("--org", help="Org slug; repeatable.")] = None,
    types: Annotated[str | None, typer.Option(help="Comma-separated event types.")] = None,
    limit: int = 100,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Events after a cursor, oldest first; the last line is the cursor to pass next time.

    Example: orderflow-ingest events list --org acme --types message.failed
    """
    from orderflow_ingest import events
    from orderflow_ingest.db import connect

    with connect(settings_or_exit(config).database_url) as conn:
        org_ids = _org_ids(conn, org) if org else None
        wanted = [item.strip() for item in (types or "").split(",") if item.strip()] or None
        try:
            data, cursor = events.read(conn, after, org_ids=org_ids, types=wanted, limit=limit)
        except events.InvalidCursor as error:
            fail(str(error), 2)
    text = "\n".join(
        f"{e['occurred_at'].isoformat()}  {e['type']:<22} {e['inbound_message_id'] or '-'}"
        f"  {json.dumps(e['data'], default=str)}"
        for e in data
    )
    _print({"data": data, "next_cursor": cursor}, as_json, (text + "\n" if text else "") + cursor)


@events_app.command("prune")
def events_prune(
    days: Annotated[
        int | None,
        typer.Option(help="Keep this many days (default ORDERFLOW_EVENT_RETENTION_DAYS)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Delete events older than the retention (a systemd timer runs this daily).

    Example: orderflow-ingest events prune
    """
    from orderflow_ingest import events
    from orderflow_ingest.db import connect

    settings = settings_or_exit(config)
    keep = days if days is not None else settings.event_retention_days
    if keep < 1:
        fail("--days must be at least 1", 2)
    with connect(settings.database_url, timeout=300) as conn:
        gone = events.prune(conn, timedelta(days=keep))
    typer.echo(f"pruned {gone} events older than {keep} days")


def register(app: typer.Typer) -> None:
    app.command("api")(api)
    app.add_typer(key_app, name="key", no_args_is_help=True)
    app.add_typer(events_app, name="events", no_args_is_help=True)
