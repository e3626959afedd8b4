"""The `orderflow-ingest` command line: every long-running part, the database and the orgs.

Here are `db` and `org` and the delivery service; every other command lives in its package's
command.py, beside the work it calls, and that module's `register(app)` adds it (the loop at the
end, in the order `--help` lists them). Those modules import only typer and cli_support at
module level: each command imports what it needs when it runs.

`deliver` is not here: it is the compiled pipe client (pipe/deliver.c) that pipe(8) runs once
per message; entry.py execs it before typer is imported.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from orderflow_ingest.api import command as api_command
from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit
from orderflow_ingest.devstack import command as devstack_command
from orderflow_ingest.domains import command as domains_command
from orderflow_ingest.inbox import command as inbox_command
from orderflow_ingest.jobs import command as jobs_command
from orderflow_ingest.lifecycle import command as lifecycle_command
from orderflow_ingest.milter import command as milter_command
from orderflow_ingest.ops import command as ops_command
from orderflow_ingest.webhooks import command as webhooks_command

app = typer.Typer(
    help="orderflow-ingest: purchase orders by email, from Postfix to documents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from orderflow_ingest import version

        typer.echo(f"orderflow-ingest {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """orderflow-ingest: purchase orders by email, from Postfix to documents."""


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
org_app = typer.Typer(help="Orgs: who may receive orders at orders+<slug>@<domain>.")
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org", no_args_is_help=True)


def emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, default=str, indent=2))
    else:
        typer.echo(text)


@db_app.command("migrate")
def db_migrate(
    config: ConfigOption = None,
    migrate_config: Annotated[
        str | None,
        typer.Option(
            "--migrate-config",
            help="File with the schema owner's ORDERFLOW_MIGRATE_DATABASE_URL"
            " (default /etc/orderflow/migrate.env; root-only, read by this command alone).",
        ),
    ] = None,
) -> None:
    """Apply pending migrations from sql/ and the runtime role's grants (safe to re-run).

    Example: orderflow-ingest db migrate --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.db import migrate
    from orderflow_ingest.outcomes import EX_CONFIG
    from orderflow_ingest.settings import SettingsError, load_migrate_settings

    try:
        settings = load_migrate_settings(config, migrate_config)
    except SettingsError as error:
        fail(f"configuration error: {error}", EX_CONFIG)
    applied = migrate(settings)
    typer.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


def _org_text(org: dict[str, Any]) -> str:
    return f"{org['slug']}\t{org['status']}\t{org['id']}\t{org['name']}"


@org_app.command("add")
def org_add(
    slug: str,
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an org; mail to orders+SLUG@<domain> is accepted from then on.

    Example: orderflow-ingest org add acme --name "Acme GmbH"
    """
    from orderflow_ingest.addressing import SLUG_PATTERN
    from orderflow_ingest.db import connect
    from orderflow_ingest.orgs import add_org, org_by_slug

    slug = slug.lower()
    if not SLUG_PATTERN.fullmatch(slug):
        fail(f"slug {slug!r} must be lower-case letters, digits and inner hyphens (max 63)", 2)
    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        if org_by_slug(conn, slug):
            fail(f"org {slug} already exists", 1)
        org = add_org(conn, slug, name or slug)
    emit(org, as_json, _org_text(org))


@org_app.command("list")
def org_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List orgs: slug, status, id, name.

    Example: orderflow-ingest org list --json
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.orgs import list_orgs

    with connect(settings_or_exit(config).database_url) as conn:
        orgs = list_orgs(conn)
    emit(orgs, as_json, "\n".join(_org_text(org) for org in orgs) or "no orgs")


def _set_status(slug: str, status: str, config: str | None, as_json: bool) -> None:
    from orderflow_ingest.db import connect
    from orderflow_ingest.orgs import set_org_status

    with connect(settings_or_exit(config).database_url) as conn:
        org = set_org_status(conn, slug.lower(), status)
    if org is None:
        fail(f"no org {slug}")
    emit(org, as_json, _org_text(org))


@org_app.command("disable")
def org_disable(slug: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Stop accepting mail for an org (550 at RCPT; its messages are kept).

    Mail that Postfix had already queued for it is not bounced: it is stored (raw in S3, a
    row) and held FAILED with reason org_disabled, without extraction. To bring it back:
    `org enable SLUG`, then `reprocess --org SLUG --status FAILED`.

    Example: orderflow-ingest org disable acme
    """
    _set_status(slug, "disabled", config, as_json)


@org_app.command("enable")
def org_enable(slug: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Accept mail for a disabled org again.

    Example: orderflow-ingest org enable acme
    """
    _set_status(slug, "active", config, as_json)


@org_app.command("show")
def org_show(slug: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """An org with message counts per status, document count and last received time.

    Example: orderflow-ingest org show acme
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.orgs import org_summary

    with connect(settings_or_exit(config).database_url) as conn:
        org = org_summary(conn, slug.lower())
    if org is None:
        fail(f"no org {slug}")
    text = "\n".join(f"{key}: {value}" for key, value in org.items())
    emit(org, as_json, text)


@app.command("deliver-service")
def deliver_service(config: ConfigOption = None) -> None:
    """Run the delivery service that `deliver` (pipe(8)) hands each message to.

    Holds pooled PostgreSQL, Redis and S3 clients so the per-message process stays tiny.
    Example: orderflow-ingest deliver-service --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.pipe.service import serve

    sys.exit(serve(settings_or_exit(config)))


@app.command("build-deliver")
def build_deliver(
    output: Annotated[
        str | None, typer.Option(help="Where to write it (default: beside this python3).")
    ] = None,
) -> None:
    """Compile the pipe client that pipe(8) runs per message (needs a C compiler).

    Prints `changed PATH` or `unchanged PATH` (the Ansible role reads which).
    Example: orderflow-ingest build-deliver
    """
    from pathlib import Path

    from orderflow_ingest.pipe.build import BuildError, build, client_path

    target = Path(output) if output else client_path()
    try:
        changed = build(target)
    except BuildError as error:
        fail(str(error))
    typer.echo(f"{'changed' if changed else 'unchanged'} {target}")


for _register in (
    jobs_command.register,  # worker, inspect
    milter_command.register,  # milter
    ops_command.register,  # reprocess, sweep, show, raw, queue, doctor, exporter
    devstack_command.register,  # dev up|down|env
    webhooks_command.register,  # webhook ..., webhook-dispatcher
    api_command.register,  # api, key ..., events ...
    lifecycle_command.register,  # purge, verify-storage, org retention|delete
    inbox_command.register,  # user add|list|disable|link
    domains_command.register,  # domain add|verify|list|show|remove|check
):
    _register(app)
