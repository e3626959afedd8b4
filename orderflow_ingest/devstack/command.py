"""`orderflow-ingest dev up|down|env`: the local stack from a shell.

    eval "$(orderflow-ingest dev up)"     # start, then export its settings into this shell
    orderflow-ingest dev down             # stop everything it started

Only `export NAME=value` lines go to standard output (shell-quoted, for eval); progress and
errors go to standard error.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orderflow_ingest.devstack.errors import StackError
from orderflow_ingest.devstack.options import EXTERNAL_SETTINGS, StackOptions

if TYPE_CHECKING:
    from orderflow_ingest.devstack.stack import Stack

DEFAULT_DIR = Path(".devstack")

dev_app = typer.Typer(
    help="A throwaway local stack: PostgreSQL, Redis, S3, Postfix and our services.",
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


@dev_app.command("up")
def up(
    directory: DirOption = DEFAULT_DIR,
    milter: Annotated[
        bool | None, typer.Option("--milter/--no-milter", help="Attach the milter to Postfix.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="RQ workers.")] = None,
    deliver: Annotated[
        bool | None,
        typer.Option("--deliver/--no-deliver", help="Run the delivery service pipe(8) hands to."),
    ] = None,
) -> None:
    """Start the stack (or what of it is not running) and print its settings as exports.

    Servers named by ORDERFLOW_DATABASE_URL, ORDERFLOW_REDIS_URL or ORDERFLOW_S3_ENDPOINT_URL
    in the environment are used instead of starting our own (first `up` of a directory only).
    """
    from orderflow_ingest.devstack.stack import Stack

    base = directory.resolve()
    try:
        if (base / "stack.json").is_file():
            options = Stack.load(base).options
        else:
            external = {
                name: os.environ[name] for name in EXTERNAL_SETTINGS if os.environ.get(name)
            }
            for name in external:
                if name.endswith("_URL"):
                    typer.echo(f"dev up: using {name} from the environment", err=True)
            options = StackOptions(external=external)
        changes: dict[str, object] = {}
        if milter is not None:
            changes["milter"] = milter
        if workers is not None:
            changes["workers"] = workers
        if deliver is not None:
            changes["deliver"] = deliver
        options = StackOptions.from_dict({**options.as_dict(), **changes})
        typer.echo(f"dev up: starting the stack in {base} ...", err=True)
        stack = Stack(base, options).up()
    except (StackError, OSError) as error:
        raise _fail(error) from None
    typer.echo(
        f"dev up: ready in {stack.up_seconds:.1f}s; SMTP on {stack.smtp_host}:{stack.smtp_port}, "
        f"logs in {stack.layout.logs}",
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
    """Stop everything `dev up` started in this directory."""
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
