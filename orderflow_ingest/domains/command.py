"""`orderflow-ingest domain add|verify|list|show|remove|check`: custom domains per org."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit

domain_app = typer.Typer(
    help="Custom domains: an org receives orders at its own domain (orders@po.example.com).",
    no_args_is_help=True,
)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


def _line(row: dict[str, Any]) -> str:
    parts = "*" if row["accept_all"] else ",".join(row["local_parts"])
    return f"{row['domain']}\t{row['state']}\t{row['org_slug']}\t{parts}"


def _publish_text(row: dict[str, Any], hosts: tuple[str, ...]) -> str:
    from orderflow_ingest.domains.checks import txt_name, txt_value

    lines = [
        f"domain {row['domain']} added for org {row['org_slug']} (state {row['state']})",
        "publish in DNS:",
        f'  {txt_name(row["domain"])}.  TXT  "{txt_value(row["txt_token"])}"',
    ]
    lines += [f"  {row['domain']}.  MX  10 {host}." for host in hosts]
    lines.append(
        "Every MX of the domain must be one of these. Then run"
        f" `orderflow-ingest domain verify {row['domain']}` (or wait for the periodic check)."
    )
    return "\n".join(lines)


@domain_app.command("add")
def domain_add(
    org: str,
    domain: str,
    local_part: Annotated[
        list[str] | None,
        typer.Option("--local-part", "-l", help="A local part accepted there (repeatable)."),
    ] = None,
    accept_all: Annotated[
        bool, typer.Option("--accept-all", help="Accept every local part at the domain.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register DOMAIN for ORG (state pending); prints the TXT record and MX hosts to publish.

    Example: orderflow-ingest domain add acme po.acme-corp.com -l orders
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains import manage, store
    from orderflow_ingest.orgs import org_by_slug

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        found = org_by_slug(conn, org.lower())
        if found is None or found["status"] == "deleted":
            fail(f"no org {org}")
        try:
            data = manage.add_domain(
                conn, settings, found["id"], domain, accept_all, local_part or []
            )
        except store.DomainError as error:
            fail(str(error), 2)
    _emit(data, as_json, _publish_text(data, tuple(data["mx_hosts"])))


@domain_app.command("verify")
def domain_verify(domain: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check DOMAIN's TXT and MX now and apply the result (one result of the N needed).

    Example: orderflow-ingest domain verify po.acme-corp.com
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains import manage

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        data = manage.verify(conn, settings, domain)
    if data is None:
        fail(f"no domain {domain}")
    result = data.get("last_result") or {}
    text = f"{_line(data)}\n{result.get('detail', '')}"
    if data["event"]:
        text += f"\n{data['event']}: {data['previous_state']} -> {data['state']}"
    elif data["state"] == "pending":
        text += (
            f"\nstill pending: {data['pass_streak']} of {data['confirmations_needed']}"
            " consecutive passing checks"
        )
    _emit(data, as_json, text)


@domain_app.command("list")
def domain_list(
    org: Annotated[str | None, typer.Option(help="Only this org's domains.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List custom domains: domain, state, org, accepted local parts (* = all).

    Example: orderflow-ingest domain list --org acme
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains import store

    with connect(settings_or_exit(config).database_url) as conn:
        rows = store.list_domains(conn, org.lower() if org else None)
    _emit(rows, as_json, "\n".join(_line(row) for row in rows) or "no custom domains")


@domain_app.command("show")
def domain_show(domain: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One custom domain: state, streaks, last check, the TXT record to publish.

    Example: orderflow-ingest domain show po.acme-corp.com
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains import manage, store

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        row = store.get_domain(conn, domain)
    if row is None:
        fail(f"no domain {domain}")
    data = {**row, **manage.publish(row, settings)}
    _emit(data, as_json, "\n".join(f"{key}: {value}" for key, value in data.items()))


@domain_app.command("remove")
def domain_remove(domain: str, config: ConfigOption = None) -> None:
    """Forget DOMAIN: Postfix stops accepting it at once (no reload).

    Example: orderflow-ingest domain remove po.acme-corp.com
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains import store

    with connect(settings_or_exit(config).database_url) as conn:
        if not store.remove_domain(conn, domain):
            fail(f"no domain {domain}")
    typer.echo(f"removed {domain.rstrip('.').lower()}")


@domain_app.command("check")
def domain_check(
    quiet: Annotated[bool, typer.Option("--quiet", help="Print only state changes.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every custom domain that is due (the periodic job; safe on every host at once).

    Example: orderflow-ingest domain check --quiet   (a systemd timer runs it)
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.domains.monitor import dns_checker, policy_of, run

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        report = run(
            conn,
            dns_checker(settings),
            policy_of(settings),
            float(settings.domain_check_interval),
        )
    lines = [f"{t['event']}\t{t['domain']}\t{t['from']} -> {t['to']}" for t in report.transitions]
    if not quiet:
        lines.append(f"checked {report.checked} domain(s)")
    data = {"checked": report.checked, "transitions": report.transitions}
    if as_json or lines:
        _emit(data, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add `domain add|verify|list|show|remove|check` to the CLI."""
    app.add_typer(domain_app, name="domain")
