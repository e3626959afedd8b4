"""CLI commands of the jobs package: `worker` and `inspect` (registered in orderflow_ingest.cli).

`inspect` imports only the pure extraction modules, never a backend client, so it runs on a
laptop with nothing but the .eml file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orderflow_ingest.outcomes import EX_NOINPUT


def worker(
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Settings file (default $ORDERFLOW_CONFIG)."),
    ] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queue is empty.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Worker name (default host-pid-random).")
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Exit after this many jobs.")
    ] = None,
    with_scheduler: Annotated[
        bool,
        typer.Option(
            "--with-scheduler/--without-scheduler",
            help="Also run RQ's scheduler, which re-queues retries after their backoff.",
        ),
    ] = True,
) -> None:
    """Run an RQ worker on the attachment queue (extract_attachments jobs).

    Example: orderflow-ingest worker --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.cli_support import settings_or_exit
    from orderflow_ingest.jobs.worker import run_worker

    settings = settings_or_exit(config)
    run_worker(settings, burst=burst, name=name, with_scheduler=with_scheduler, max_jobs=max_jobs)


def inspect(
    file: Annotated[Path, typer.Argument(help="A raw message (.eml), or - for standard input.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    max_depth: Annotated[
        int, typer.Option("--max-depth", help="Nesting beyond this is not walked.")
    ] = 20,
) -> None:
    """Show what the extraction job would make of a message: documents, and why not the rest.

    Touches no backend. Malformed input still gives a result (with defects) and exit 0.
    Example: orderflow-ingest inspect order.eml --json
    """
    from orderflow_ingest.jobs.part_inspection import (
        inspect_file,
        inspect_stream,
        render_json,
        render_text,
    )

    if str(file) == "-":
        result = inspect_stream(sys.stdin.buffer, max_depth=max_depth)
    else:
        try:
            result = inspect_file(file, max_depth=max_depth)
        except OSError as error:
            typer.echo(f"orderflow-ingest: cannot read {file}: {error.strerror}", err=True)
            raise typer.Exit(EX_NOINPUT) from None
    typer.echo(render_json(result) if json_output else render_text(result))


def register(app: typer.Typer) -> None:
    """Add the jobs package's commands to the CLI."""
    app.command("worker")(worker)
    app.command("inspect")(inspect)
