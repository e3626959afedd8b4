"""What every `orderflow-ingest` command shares: the --config option, settings loading that
stops with the setting's name (exit 78, EX_CONFIG), and one-line errors."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from orderflow_ingest.outcomes import EX_CONFIG, EXIT_FAILURE
from orderflow_ingest.settings import Settings, SettingsError, load_settings

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (default $ORDERFLOW_CONFIG or /etc/orderflow/ingest.env).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"orderflow-ingest: {message}", err=True)
    raise typer.Exit(code)


def command_group(app: typer.Typer, name: str) -> typer.Typer:
    """The sub-command group `name` already added to `app`, for a package whose commands
    belong in a group another module owns (lifecycle's `org delete` under cli.py's `org`)."""
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    raise LookupError(f"no command group {name!r}")


def settings_or_exit(config: str | None) -> Settings:
    """Settings, or a one-line error naming the bad setting and exit 78 (EX_CONFIG)."""
    try:
        return load_settings(config)
    except SettingsError as error:
        fail(f"configuration error: {error}", EX_CONFIG)
