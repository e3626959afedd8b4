"""The operator commands on the `orderflow-ingest` CLI: reprocess, sweep, show/trace, raw,
queue, doctor and exporter. `register(app)` adds them. Each command parses its arguments, calls
the work in the sibling module of its name (reprocess.py, sweep.py, trace.py, postfix_queue.py,
doctor.py, exporter.py) and prints what it returns.

Only typer and the standard library are imported at module level: the CLI loads this for
every command, and the heavy clients are needed only by the command that runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit
from orderflow_ingest.outcomes import EX_CONFIG, EX_TEMPFAIL, EXIT_FAILURE, EXIT_USAGE

OrgOption = Annotated[
    str | None, typer.Option("--org", help="Only messages of this org (slug).", show_default=False)
]


def _json_default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def _dump(data: Any) -> str:
    """JSON for the terminal: C1/bidi controls and lone surrogates as \\u escapes too."""
    from orderflow_ingest.ops.terminal import safe_json

    return safe_json(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))


def _logging(settings: Any, component: str) -> None:
    """JSON events to the log file; without one, only warnings to stderr (the operator's
    terminal gets the human-readable report on stdout, not every event twice)."""
    from orderflow_ingest.logs import setup_logging

    level = settings.log_level if settings.log_file else "WARNING"
    setup_logging(level, settings.log_file, component=component)


@contextmanager
def _backends(settings: Any, s3: bool = True) -> Iterator[tuple[Any, Any, Any]]:
    """(db connection, redis, s3 client); an unreachable backend is exit 75, one line."""
    import psycopg
    import redis.exceptions

    from orderflow_ingest import metrics
    from orderflow_ingest.db import connect
    from orderflow_ingest.job_queue import make_redis

    try:
        conn = connect(settings.database_url, timeout=settings.backend_timeout)
    except psycopg.OperationalError as error:
        fail(f"PostgreSQL unreachable: {str(error).strip().splitlines()[0]}", EX_TEMPFAIL)
    redis_client = make_redis(settings)
    try:
        redis_client.ping()
    except redis.exceptions.RedisError as error:
        conn.close()
        fail(f"Redis unreachable: {error}", EX_TEMPFAIL)
    metrics.configure(redis_client, flush_interval=None, host=settings.metrics_host)
    s3_client = None
    if s3:  # boto3 costs ~0.6 s to import and set up: only for commands that read S3
        from orderflow_ingest.storage import make_client

        s3_client = make_client(settings)
    try:
        with conn:
            yield conn, redis_client, s3_client
    finally:
        metrics.flush()
        redis_client.close()


def _database_unreachable(settings: Any) -> str | None:
    """None when PostgreSQL answers, else one line saying why not."""
    import psycopg

    from orderflow_ingest.db import connect

    try:
        connect(settings.database_url, timeout=settings.backend_timeout).close()
    except psycopg.OperationalError as error:
        return f"PostgreSQL unreachable: {str(error).strip().splitlines()[0]}"
    return None


def _show_postfix_only(
    settings: Any, identifier: str, maillog: str | None, as_json: bool, database_error: str
) -> None:
    """During a database outage, mail waits in Postfix's queue: show what Postfix knows."""
    from orderflow_ingest.ops import queries, trace

    typer.echo(f"{database_error}; showing what Postfix knows", err=True)
    kind = queries.postfix_kind(identifier)
    known = trace.postfix_story(settings, identifier.strip(), kind, maillog)
    if known is None:
        fail(f"{database_error}, and Postfix knows nothing of {identifier!r}", EX_TEMPFAIL)
    known["database_error"] = database_error
    typer.echo(_dump([known]) if as_json else trace.render_postfix_text(known))


# --- reprocess ---------------------------------------------------------------------------


def reprocess(
    identifiers: Annotated[
        list[str] | None,
        typer.Argument(
            help="inbound_message ids, Message-IDs, Postfix queue ids or trace_ids.",
            show_default=False,
        ),
    ] = None,
    org: OrgOption = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="FAILED, PARSED or STORED (repeatable, or comma-separated). Default: all three.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Received at or after: 24h, yesterday, 2024-05-01T10:00.", show_default=False
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Received before (same forms as --since).", show_default=False),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many messages.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would run; change nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the jobs and report what they changed.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits for all jobs.")] = 600,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run attachment extraction again from the raw message kept in S3.

    PARSED and FAILED messages are reopened (-> STORED) and their extraction job is enqueued
    again; a STORED message without a live job just gets its job. Documents are never
    duplicated: the job updates the ones it wrote before. RECEIVED messages, and messages
    whose raw never reached S3, cannot be reprocessed; the report says so.

    Examples:
      orderflow-ingest reprocess --status FAILED --since yesterday --dry-run
      orderflow-ingest reprocess --org acme --status FAILED --since 2024-05-01 --until 2024-05-02
      orderflow-ingest reprocess '<PO-4711@customer.example>' --wait
    """
    from orderflow_ingest.ops import reprocess as ops
    from orderflow_ingest.ops.timeparse import parse_when

    try:
        request = ops.Request(
            identifiers=tuple(identifiers or ()),
            org=org,
            statuses=ops.parse_statuses(status or ()),
            since=parse_when(since) if since else None,
            until=parse_when(until) if until else None,
            limit=limit,
        )
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    if request.names_nothing():
        fail(
            "say which messages: ids, or a selection such as --status FAILED --since 24h",
            EXIT_USAGE,
        )
    settings = settings_or_exit(config)
    _logging(settings, "reprocess")
    with _backends(settings) as (conn, redis_client, s3):
        selected, unmatched = ops.select(conn, request)
        conn.commit()
        with _progress(len(selected), "reprocess", enabled=not as_json) as advance:
            steps = ops.reprocess(
                conn, redis_client, s3, settings, selected, dry_run, progress=lambda s: advance()
            )
        waited_ok = True
        if wait and not dry_run:
            with _progress(
                sum(1 for s in steps if s.done), "waiting for jobs", enabled=not as_json
            ) as advance:
                waited_ok = ops.wait_for_jobs(
                    redis_client, conn, steps, timeout, progress=lambda s: advance()
                )
    totals = ops.summary(steps, dry_run)
    if as_json:
        typer.echo(
            _dump(
                {
                    "dry_run": dry_run,
                    "messages": [step.as_dict() for step in steps],
                    "totals": totals,
                    "unmatched": unmatched,
                }
            )
        )
    else:
        if dry_run:
            typer.echo("dry run: nothing was changed")
        for step in steps:
            typer.echo(ops.describe(step, dry_run))
        for identifier in unmatched:
            typer.echo(f"no message matches {identifier!r}")
        typer.echo(ops.totals_line(steps, totals))
    if ops.has_problems(steps) or unmatched or not waited_ok:
        raise typer.Exit(EXIT_FAILURE)


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr for long runs at a terminal; a no-op otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or total < 20 or not console.is_terminal:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


# --- sweep -------------------------------------------------------------------------------


def sweep(
    older_than: Annotated[
        str, typer.Option(help="Stuck means unchanged for longer than this (15m, 1h, 900).")
    ] = "15m",
    max_attempts: Annotated[
        int,
        typer.Option(help="Sweeps of a message whose job keeps failing before it is set FAILED."),
    ] = 3,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be done; change nothing.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing when nothing is stuck (cron).")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-enqueue messages stuck in STORED with no live job; report stuck RECEIVED ones.

    Safe to run from a systemd timer or cron on every mail host at once: it acts under a row
    lock, re-checks the job first, and exits 0 when there is nothing to do. RECEIVED rows are
    only reported: their raw message is not in S3 yet and Postfix still holds and retries it.

    Examples:
      orderflow-ingest sweep --dry-run
      orderflow-ingest sweep --older-than 30m --quiet      # from a timer
    """
    from orderflow_ingest.ops import sweep as ops
    from orderflow_ingest.ops.timeparse import parse_duration

    try:
        threshold = parse_duration(older_than)
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    settings = settings_or_exit(config)
    _logging(settings, "sweep")
    with _backends(settings, s3=False) as (conn, redis_client, _s3):
        findings = ops.sweep(
            conn, redis_client, settings, threshold, dry_run=dry_run, max_attempts=max_attempts
        )
    totals = ops.totals(findings)
    if as_json:
        typer.echo(
            _dump(
                {
                    "dry_run": dry_run,
                    "older_than_seconds": threshold.total_seconds(),
                    "messages": [finding.as_dict() for finding in findings],
                    "totals": totals,
                }
            )
        )
    elif findings:
        if dry_run:
            typer.echo("dry run: nothing was changed")
        for finding in findings:
            typer.echo(finding.line())
        typer.echo(ops.totals_line(totals))
    elif not quiet:
        typer.echo(f"nothing stuck for longer than {older_than}")
    if ops.ERROR in totals:
        raise typer.Exit(EXIT_FAILURE)


# --- show / trace / raw ------------------------------------------------------------------


def show(
    identifier: Annotated[
        str,
        typer.Argument(
            help="Message-ID, Postfix queue id, trace_id, inbound_message id or document id."
        ),
    ],
    org: OrgOption = None,
    maillog: Annotated[
        str | None,
        typer.Option(
            help="Postfix log to search (default: Postfix's maillog_file, else /var/log/mail.log).",
            show_default=False,
        ),
    ] = None,
    postfix: Annotated[
        bool, typer.Option("--postfix/--no-postfix", help="Look in Postfix's queue and log.")
    ] = True,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The whole story of a message: envelope, org, auth verdicts, status history, S3 keys,
    documents and why other parts are not, RQ jobs and the Postfix log lines.

    Examples:
      orderflow-ingest show '<PO-4711@customer.example>'
      orderflow-ingest show 4XyZ1B2C3D --json
      orderflow-ingest trace 3f2b7c0e9a8d4e6f8a1b2c3d4e5f6a7b
    """
    from orderflow_ingest.ops import queries, trace

    settings = settings_or_exit(config)
    _logging(settings, "show")
    database_error = _database_unreachable(settings)
    if database_error is not None:
        _show_postfix_only(settings, identifier, maillog, as_json, database_error)
        return
    with _backends(settings) as (conn, redis_client, s3):
        resolved = queries.resolve(conn, identifier, org)
        conn.commit()
        stories = [
            trace.story(conn, redis_client, s3, settings, row, maillog, postfix=postfix)
            for row in resolved.messages
        ]
    if not stories:
        # Not in the database: perhaps still in Postfix's queue (backend outage) or just
        # being delivered. Postfix's queue and log say what happened to it.
        known = (
            trace.postfix_story(settings, identifier.strip(), resolved.kind, maillog)
            if postfix and org is None
            else None
        )
        if known is not None:
            typer.echo(_dump([known]) if as_json else trace.render_postfix_text(known))
            return
        if as_json:
            typer.echo(_dump([]))
        fail(f"no message matches {identifier!r}" + (f" in org {org}" if org else ""))
    if as_json:
        typer.echo(_dump(stories))
        return
    if len(stories) > 1:
        typer.echo(f"{len(stories)} messages match {identifier!r} (one per org recipient)\n")
    typer.echo("\n\n".join(trace.render_text(story) for story in stories))


def raw(
    identifier: Annotated[
        str,
        typer.Argument(
            help="inbound_message id, Message-ID, queue id or trace_id; a document"
            " id gives that document's file."
        ),
    ],
    org: OrgOption = None,
    config: ConfigOption = None,
) -> None:
    """Stream the stored raw message (.eml) to standard output, as it arrived.

    Examples:
      orderflow-ingest raw 1b4e28ba-2fa1-11d2-883f-0016d3cca427 > order.eml
      orderflow-ingest raw '<PO-4711@customer.example>' --org acme | orderflow-ingest inspect -
    """
    from orderflow_ingest.ops import queries, trace

    settings = settings_or_exit(config)
    _logging(settings, "raw")
    with _backends(settings) as (conn, _redis, s3):
        try:
            key = trace.raw_key(conn, queries.resolve(conn, identifier, org), identifier)
        except LookupError as error:
            fail(str(error))
        conn.commit()
        try:
            trace.stream_object(s3, settings.s3_bucket, key, sys.stdout.buffer)
        except BrokenPipeError:
            pass  # `| head` closed the pipe: not an error
        except Exception as error:
            fail(f"cannot read {key} from bucket {settings.s3_bucket}: {error}")


# --- queue -------------------------------------------------------------------------------


def queue(
    reasons: Annotated[int, typer.Option(help="How many top deferral reasons to list.")] = 5,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Postfix's queue at a glance, from `postqueue -j`: messages, recipients, size and the
    oldest message per queue, and the most common deferral reasons.

    Examples:
      orderflow-ingest queue
      orderflow-ingest queue --json --reasons 10
    """
    from orderflow_ingest.ops import postfix_queue

    settings = settings_or_exit(config)
    try:
        summary = postfix_queue.queue_summary(settings.postfix_config_dir)
    except postfix_queue.PostqueueError as error:
        fail(str(error), EX_TEMPFAIL)
    typer.echo(_dump(summary.as_dict(reasons)) if as_json else summary.render_text(reasons))


# --- doctor ------------------------------------------------------------------------------


def doctor(
    min_free_mb: Annotated[
        int | None,
        typer.Option(
            help="Fail when the spool or Postfix queue disk has less free (MiB)."
            " Default: ORDERFLOW_MIN_FREE_MB, where the milter starts answering 452.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check everything a mail host needs to take orders; one line per check.

    Settings, PostgreSQL, migrations, Redis, RQ workers, the S3 bucket, `postfix check`, our
    transport and milter in Postfix's config, the milter and deliver sockets, free disk and
    the exporter. Exits 1 if any check fails (warnings do not fail).

    Example: orderflow-ingest doctor --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.ops import doctor as ops
    from orderflow_ingest.settings import SettingsError, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as error:
        failed = ops.Check("settings", ops.FAIL, str(error))
        typer.echo(_dump([failed.as_dict()]) if as_json else failed.line())
        raise typer.Exit(EXIT_FAILURE) from None
    min_free = None if min_free_mb is None else min_free_mb * 1024 * 1024
    checks = ops.run_checks(settings, min_free=min_free)
    if as_json:
        typer.echo(_dump([check.as_dict() for check in checks]))
    else:
        typer.echo("\n".join(check.line() for check in checks))
    if ops.failed(checks):
        raise typer.Exit(EXIT_FAILURE)


# --- exporter ----------------------------------------------------------------------------


def exporter(config: ConfigOption = None) -> None:
    """Serve Prometheus metrics on ORDERFLOW_METRICS_LISTEN (loopback only).

    Counters and histograms recorded by deliver, the milter and the jobs, plus Postfix queue
    depth, RQ queue depth, ingest lag and free disk, read at scrape time. Refuses to listen
    on anything but a loopback address.

    Example: orderflow-ingest exporter --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.ops import exporter as ops

    settings = settings_or_exit(config)
    try:
        ops.loopback_bind(settings.metrics_listen)
    except ops.NotLoopback as error:
        fail(f"refusing to serve metrics: {error}", EX_CONFIG)
    sys.exit(ops.serve(settings))


def reflow(doc: str | None) -> str:
    """A docstring as help text: paragraphs joined into one line each (typer's rich mode
    keeps source line breaks), indented lines (the examples) kept as they are."""
    import inspect

    out: list[str] = []
    paragraph: list[str] = []
    for line in inspect.cleandoc(doc or "").splitlines():
        if line.strip() and not line.startswith(" "):
            paragraph.append(line.strip())
            continue
        if paragraph:
            out.append(" ".join(paragraph))
            paragraph = []
        out.append(line)
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n".join(out)


def register(app: typer.Typer) -> None:
    """Add the operator commands to the CLI."""
    for name, function in (
        ("reprocess", reprocess),
        ("sweep", sweep),
        ("show", show),
        ("raw", raw),
        ("queue", queue),
        ("doctor", doctor),
        ("exporter", exporter),
    ):
        app.command(name, help=reflow(function.__doc__))(function)
    app.command("trace", help="Same as `show`: the whole story of one message.")(show)
