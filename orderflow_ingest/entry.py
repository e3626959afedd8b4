"""The `orderflow-ingest` console script.

`deliver` is the compiled pipe client (pipe/deliver.c, installed beside python3 as
`orderflow-deliver`): pipe(8) runs that binary directly, and `orderflow-ingest deliver` execs it,
so people and tests run the very program Postfix runs, without typer, boto3 or psycopg.
"""

from __future__ import annotations

import os
import sys

from orderflow_ingest.outcomes import EX_OK, EX_TEMPFAIL


def deliver(args: list[str]) -> int:
    from orderflow_ingest.pipe.build import client_path

    client = str(client_path())
    try:
        os.execv(client, [client, *args])
    except OSError:
        # Not built (`orderflow-ingest build-deliver`): defer like the client itself would.
        sys.stdout.write("temporary failure (transport misconfigured)\n")
    return EX_TEMPFAIL


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "deliver":
        return deliver(sys.argv[2:])
    from orderflow_ingest.cli import app

    app()
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
