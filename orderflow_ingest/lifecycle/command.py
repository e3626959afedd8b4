"""CLI of the data lifecycle: `purge`, `verify-storage`, `org retention`, `org delete`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import (
    ConfigOption,
    JsonOption,
    command_group,
    fail,
    settings_or_exit,
)
from orderflow_ingest.outcomes import EX_TEMPFAIL, EXIT_FAILURE  # EX_TEMPFAIL: the timer retries

BATCH_STATEMENT_TIMEOUT = 300.0

OrgOption = Annotated[str | None, typer.Option("--org", help="Only this org (slug).")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print what would be deleted; change nothing.")
]


def _connect_batch(settings: Any) -> Any:
    """A connection for the batch commands: connecting fails as fast as anywhere, but their
    selections scan every terminal message, which on a large table takes longer than one
    delivery's ORDERFLOW_BACKEND_TIMEOUT, so statements get BATCH_STATEMENT_TIMEOUT."""
    from orderflow_ingest.db import connect

    conn = connect(settings.database_url, timeout=settings.backend_timeout)
    seconds = max(float(settings.backend_timeout), BATCH_STATEMENT_TIMEOUT)
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(seconds)}s",))
    conn.commit()
    return conn


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _totals_text(verb: str, totals: Any) -> str:
    text = (
        f"{verb} {totals.messages} messages, {totals.documents} documents,"
        f" {totals.objects} objects, {totals.bytes} bytes ({_human(totals.bytes)})"
    )
    if totals.failed:
        text += f"; {len(totals.failed)} messages kept for the next run (S3 errors)"
    return text


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


def _org_or_exit(conn: Any, slug: str) -> dict[str, Any]:
    from orderflow_ingest.orgs import org_lifecycle

    org = org_lifecycle(conn, slug.lower())
    if org is None:
        fail(f"no org {slug}")
    return org


def purge(
    org: OrgOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Purge messages received longer ago than this (7d, 12h) instead of by each"
            " org's retention; at least one hour.",
        ),
    ] = None,
    dry_run: DryRunOption = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete expired PARSED/FAILED messages: their objects in S3, then their rows.

    Expired: received longer ago than the org's retention (`org retention`), else
    ORDERFLOW_RETENTION_DAYS (0 = keep forever), or than --older-than; every message of a
    deleted org. Each purged message leaves a message.purged event. Safe to re-run; a run cut
    short is finished by the next one. Exit 75 when a backend failed (retry later).
    Example: orderflow-ingest purge --dry-run
    """
    from datetime import timedelta

    import psycopg

    from orderflow_ingest.lifecycle.purge import Selection, plan
    from orderflow_ingest.lifecycle.purge import purge as run_purge
    from orderflow_ingest.ops.timeparse import parse_duration
    from orderflow_ingest.storage import make_client

    settings = settings_or_exit(config)
    age: timedelta | None = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as error:
            fail(str(error), 2)
        if age < timedelta(hours=1):
            fail("--older-than must be at least 1h (messages still arriving are never purged)", 2)
    try:
        with _connect_batch(settings) as conn:
            org_id = _org_or_exit(conn, org)["id"] if org else None
            selection = Selection(
                org_id=org_id, older_than=age, default_days=settings.retention_days
            )
            if dry_run:
                totals = plan(conn, selection)
                _emit(totals.as_dict(), as_json, _totals_text("would purge", totals))
                return
            s3 = make_client(settings)
            totals = run_purge(conn, s3, settings.s3_bucket, selection, reason="retention")
            pruned = None
            if org is None:  # the timer's run: also used/expired inbox sign-in rows
                from orderflow_ingest.inbox.signin import prune

                pruned = prune(conn)
                conn.commit()
    except psycopg.Error as error:
        fail(f"database error: {type(error).__name__}; run again later", EX_TEMPFAIL)
    text = _totals_text("purged", totals)
    if pruned is not None:
        text += f"; pruned {pruned['tokens']} sign-in links, {pruned['sessions']} inbox sessions"
    _emit({**totals.as_dict(), "inbox_signin_pruned": pruned}, as_json, text)
    if totals.failed:
        raise typer.Exit(EX_TEMPFAIL)


def verify_storage(
    org: OrgOption = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Check presence and size only (no download, no sha256)."),
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check that every raw message and document the database names is in the bucket, with
    the recorded size and sha256; list every one that is not. Exit 1 when any is missing or
    differs. Run it after restoring the database or the bucket.
    Example: orderflow-ingest verify-storage
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from orderflow_ingest.lifecycle.verify import verify
    from orderflow_ingest.storage import make_client

    settings = settings_or_exit(config)
    try:
        with _connect_batch(settings) as conn:
            org_id = _org_or_exit(conn, org)["id"] if org else None
            report = verify(
                conn, make_client(settings), settings.s3_bucket, org_id=org_id, full=not quick
            )
    except (ClientError, BotoCoreError) as error:
        fail(f"S3 error: {type(error).__name__}; nothing concluded", EX_TEMPFAIL)
    lines = [
        f"{finding.problem}\t{finding.kind}\t{finding.row_id}\t{finding.key}\t{finding.detail}"
        for finding in report.findings
    ]
    lines.append(
        f"checked {report.checked} objects ({_human(report.bytes)} verified):"
        f" {len(report.problems)} problems"
    )
    _emit(report.as_dict(), as_json, "\n".join(lines))
    if report.problems:
        raise typer.Exit(EXIT_FAILURE)


def org_retention(
    slug: str,
    days: Annotated[
        str | None,
        typer.Argument(help="Days to keep messages, 0 = forever, `default` = the global one."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show or set how long an org's messages are kept (records org.retention_changed).

    Example: orderflow-ingest org retention acme 90
    """
    from orderflow_ingest import events
    from orderflow_ingest.db import connect
    from orderflow_ingest.orgs import set_retention

    new: int | None = None
    if days is not None and days != "default":
        if not days.isdigit():
            fail(f"DAYS must be a number of days (0 = forever) or `default`, not {days!r}", 2)
        new = int(days)
    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        org = _org_or_exit(conn, slug)
        if org["deleted_at"] is not None:
            fail(f"org {slug} was deleted")
        if days is not None:
            set_retention(conn, org["id"], new)
            events.record(
                conn,
                "org.retention_changed",
                org_id=org["id"],
                data={"retention_days": new, "previous": org["retention_days"]},
            )
            conn.commit()
            org["retention_days"] = new
    own = org["retention_days"]
    effective = settings.retention_days if own is None else own
    data = {"slug": org["slug"], "retention_days": own, "effective_days": effective}
    described = "forever" if effective == 0 else f"{effective} days"
    source = "the default, ORDERFLOW_RETENTION_DAYS" if own is None else "its own setting"
    _emit(data, as_json, f"{org['slug']}: messages kept {described} ({source})")


def org_delete(
    slug: str,
    dry_run: DryRunOption = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Delete even while messages of the org are still being delivered or extracted.",
        ),
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete an org: its messages, documents and objects; the org stays as a tombstone.

    Disables the org first (new mail is refused), then refuses while messages of it are
    RECEIVED or STORED (still being delivered or extracted) unless --force. Records
    org.deleted. Example: orderflow-ingest org delete acme --dry-run
    """
    from orderflow_ingest.lifecycle import orgdelete
    from orderflow_ingest.storage import make_client

    settings = settings_or_exit(config)
    with _connect_batch(settings) as conn:
        org = _org_or_exit(conn, slug)
        if org["deleted_at"] is not None and not dry_run and not force:
            fail(f"org {slug} was deleted already (run `purge --org {slug}` to finish a purge)")
        if dry_run:
            outcome = orgdelete.dry_run(conn, org)
        else:
            try:
                outcome = orgdelete.delete(
                    conn, make_client(settings), settings.s3_bucket, org, force
                )
            except orgdelete.InFlight as error:
                fail(
                    f"org {slug} is now disabled, but {error.count} of its messages are still"
                    " being delivered or extracted; run again when they are PARSED or FAILED,"
                    " or use --force (the purge timer removes them later)"
                )
    data = {
        "slug": org["slug"],
        "dry_run": dry_run,
        "deleted": outcome.deleted,
        "in_flight": outcome.in_flight,
        **outcome.totals.as_dict(),
    }
    verb = "would delete" if dry_run else "deleted"
    text = _totals_text(verb, outcome.totals).replace(verb, f"{org['slug']}: {verb}", 1)
    if outcome.in_flight:
        text += f"; {outcome.in_flight} messages still in flight"
    if not dry_run and not outcome.deleted:
        text += "; org NOT deleted yet: run again"
    _emit(data, as_json, text)
    if not dry_run and not outcome.deleted:
        raise typer.Exit(EX_TEMPFAIL)


def register(app: typer.Typer) -> None:
    """Add the lifecycle commands to the CLI (`org retention|delete` under cli.py's `org`)."""
    app.command("purge")(purge)
    app.command("verify-storage")(verify_storage)
    org_app = command_group(app, "org")
    org_app.command("retention")(org_retention)
    org_app.command("delete")(org_delete)
