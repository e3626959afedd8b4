"""The `orderflow-ingest` console script.

`deliver` runs once per message under pipe(8), so it must not pay for typer, boto3 or psycopg:
it is dispatched to the stdlib-only pipe client before anything else is imported.
"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "deliver":
        from orderflow_ingest.pipe.client import main as deliver_main

        return deliver_main(sys.argv[2:])
    from orderflow_ingest.cli import app

    app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
