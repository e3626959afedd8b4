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


def settings_or_exit(config: str | None) -> Settings:
    """Settings, or a one-line error naming the bad setting and exit 78 (EX_CONFIG)."""
    try:
        return load_settings(config)
    except SettingsError as error:
        fail(f"configuration error: {error}", EX_CONFIG)
