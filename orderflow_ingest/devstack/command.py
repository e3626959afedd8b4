"""`orderflow-ingest dev up|down|env`: the local stack from a shell.

    eval "$(orderflow-ingest dev up)"     # start the whole system, export its settings here
    orderflow-ingest dev down             # stop everything it started

`dev up` starts the whole system by default: PostgreSQL, Redis, S3, Postfix with the milter,
the delivery service, one RQ worker and the API with the web inbox. `--no-milter`,
`--workers 0`, `--no-api`, `--no-deliver` leave parts out (the tests' fixtures start the
Stack class with StackOptions instead, and choose there).

Only `export NAME=value` lines go to standard output (shell-quoted, for eval); progress and
errors go to standard error.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orderflow_ingest.devstack.errors import StackError
from orderflow_ingest.devstack.options import EXTERNAL_SETTINGS, StackOptions

if TYPE_CHECKING:
    from orderflow_ingest.devstack.stack import Stack

DEFAULT_DIR = Path(".devstack")

dev_app = typer.Typer(
    help="A throwaway local stack: PostgreSQL, Redis, S3, Postfix and all our services.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Directory holding the stack's data, logs and state.")
]


def _exports(stack: Stack) -> str:
    return "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in sorted(stack.env.items())
    )


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(1)


def up_options(
    saved: StackOptions | None,
    environ: Mapping[str, str],
    changes: Mapping[str, object],
) -> StackOptions:
    """What `dev up` starts: the saved options of an existing stack, else the whole system
    (with servers named in the environment used instead of our own); flags change either."""
    if saved is not None:
        options = saved
    else:
        external = {name: environ[name] for name in EXTERNAL_SETTINGS if environ.get(name)}
        options = StackOptions.whole_system(external=external)
    given = {name: value for name, value in changes.items() if value is not None}
    return StackOptions.from_dict({**options.as_dict(), **given})


@dev_app.command("up")
def up(
    directory: DirOption = DEFAULT_DIR,
    milter: Annotated[
        bool | None,
        typer.Option(
            "--milter/--no-milter",
            help="Attach the milter to Postfix (SPF, DKIM, DMARC, org check at RCPT). Default: on.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="RQ workers extracting attachments. Default: 1."),
    ] = None,
    deliver: Annotated[
        bool | None,
        typer.Option(
            "--deliver/--no-deliver",
            help="Run the delivery service pipe(8) hands to. Default: on.",
        ),
    ] = None,
    api: Annotated[
        bool | None,
        typer.Option(
            "--api/--no-api",
            help="Run `orderflow-ingest api`: the HTTP API (/v1) and the web inbox (/inbox) "
            "on a loopback port, plain HTTP. Default: on.",
        ),
    ] = None,
) -> None:
    """Start the whole system (or what of it is not running) and print its settings as exports.

    A new directory gets PostgreSQL, Redis, S3, Postfix with the milter, the delivery service,
    one RQ worker and the API with the web inbox; all keep running until `dev down`. The flags
    leave parts out (or add them back); a later `up` of the same directory keeps its choices.
    Servers named by ORDERFLOW_DATABASE_URL, ORDERFLOW_REDIS_URL or ORDERFLOW_S3_ENDPOINT_URL
    in the environment are used instead of starting our own (first `up` of a directory only).

    Example: eval "$(orderflow-ingest dev up --workers 2 --no-milter)"
    """
    from orderflow_ingest.devstack.stack import Stack

    base = directory.resolve()
    try:
        saved = Stack.load(base).options if (base / "stack.json").is_file() else None
        options = up_options(
            saved,
            os.environ,
            {"milter": milter, "workers": workers, "deliver": deliver, "api": api},
        )
        if saved is None:
            for name in options.external:
                if name.endswith("_URL"):
                    typer.echo(f"dev up: using {name} from the environment", err=True)
        typer.echo(f"dev up: starting the stack in {base} ...", err=True)
        stack = Stack(base, options).up()
    except (StackError, OSError) as error:
        raise _fail(error) from None
    typer.echo(
        f"dev up: ready in {stack.up_seconds:.1f}s; SMTP on {stack.smtp_host}:{stack.smtp_port}, "
        f"logs in {stack.layout.logs}",
        err=True,
    )
    if stack.options.api:
        typer.echo(
            f"dev up: API on {stack.api_url}/v1, web inbox on {stack.inbox_url} "
            "(`orderflow-ingest user add` and `user link` sign you in)",
            err=True,
        )
    sys.stdout.write(_exports(stack))


@dev_app.command("down")
def down(
    directory: DirOption = DEFAULT_DIR,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the directory and all its data.")
    ] = False,
) -> None:
    """Stop everything `dev up` (or `make demo`) started in this directory, the API too.

    Example: orderflow-ingest dev down --purge
    """
    from orderflow_ingest.devstack.stack import Stack

    base = directory.resolve()
    try:
        Stack.load(base).down()
    except StackError as error:
        raise _fail(error) from None
    if purge:
        shutil.rmtree(base)
    typer.echo(f"dev down: stopped the stack in {base}", err=True)


@dev_app.command("env")
def env(directory: DirOption = DEFAULT_DIR) -> None:
    """Print the stack's settings again as `export` lines."""
    from orderflow_ingest.devstack.stack import Stack

    try:
        stack = Stack.load(directory.resolve())
    except StackError as error:
        raise _fail(error) from None
    sys.stdout.write(_exports(stack))


if __name__ == "__main__":
    dev_app()


def register(app: typer.Typer) -> None:
    """Add `dev up|down|env` to the CLI."""
    app.add_typer(dev_app, name="dev")
