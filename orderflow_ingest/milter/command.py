"""`orderflow-ingest milter`: the CLI entry of the milter daemon (registered in cli.py)."""

from __future__ import annotations

import typer


def milter(
    config: str | None = typer.Option(
        None, "--config", "-c", help="Settings file (default $ORDERFLOW_CONFIG)."
    ),
) -> None:
    """Run the milter daemon that Postfix calls from smtpd_milters.

    Rejects unknown org plus-addresses at RCPT, verifies SPF, DKIM and DMARC and stamps one
    Authentication-Results header. Stops cleanly on SIGTERM; SIGHUP reopens the log file.
    Example: orderflow-ingest milter --config /etc/orderflow/ingest.env
    """
    from orderflow_ingest.cli_support import settings_or_exit
    from orderflow_ingest.milter import dkimpy_fast, spf_check
    from orderflow_ingest.milter.daemon import serve

    settings = settings_or_exit(config)
    dkimpy_fast.install()  # dkimpy's RSA through OpenSSL: installed at start, never at import
    spf_check.install()  # pyspf's DNS through our budgeted resolver, likewise
    raise typer.Exit(serve(settings))


def register(app: typer.Typer) -> None:
    """Add the milter daemon's command to the CLI."""
    app.command("milter")(milter)
