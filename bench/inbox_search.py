"""The web inbox's list and search with 1 million messages in one org (issue 12: < 150 ms of
server time per page). Generates the rows in SQL (triggers off while loading, as the schema
owner), then runs each query of the inbox's search language through the same
`message_queries.list_messages` the pages call, as the runtime role: the median wall time of
`--repeat` runs, and the EXPLAIN (ANALYZE) of one, so the plan shows which index it used.

Rows: --rows messages of org acme over the past year (2 % FAILED), a PDF document on a third of
them, 5,000 senders. Run by hand (root, Debian packages installed):
  .venv/bin/python bench/inbox_search.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from psycopg import sql

from orderflow_ingest.api import message_queries
from orderflow_ingest.db import connect
from orderflow_ingest.devstack.stack import Stack, StackOptions
from orderflow_ingest.inbox.search import parse

QUERIES = (
    "",
    "status:failed",
    "has:document",
    "from:buyer4242@",
    'subject:"order 777777"',
    "filename:PO-777777.pdf",
    "-has:document larger:2k",
    "after:2026-01-01 before:2026-02-01",
)


def load(stack: Stack, rows: int) -> str:
    """Insert the rows as the schema owner, triggers off (bench only); the org's id."""
    with connect(stack.settings.migrate_url) as conn:
        org = conn.execute("SELECT id::text AS id FROM org WHERE slug = 'acme'").fetchone()
        assert org is not None
        conn.execute("SET statement_timeout = 0")
        conn.execute("ALTER TABLE inbound_message DISABLE TRIGGER USER")
        conn.execute("ALTER TABLE document DISABLE TRIGGER USER")
        conn.execute(
            "INSERT INTO inbound_message (org_id, source, source_message_id, from_email,"
            " to_email, subject, received_at, raw_storage_key, status, sha256, size_bytes,"
            " trace_id, envelope_sender, envelope_recipient)"
            " SELECT %s, 'EMAIL', '<' || n || '@bench.example>',"
            " 'buyer' || (n %% 5000) || '@customer' || (n %% 500) || '.example',"
            " 'orders+acme@bench.example', 'Purchase order ' || n,"
            " now() - (n * interval '31 seconds'), 'raw/' || n,"
            " CASE WHEN n %% 50 = 0 THEN 'FAILED' ELSE 'PARSED' END,"
            " md5(n::text) || md5(n::text), 1000 + (n %% 5000), md5(n::text),"
            " 'buyer' || (n %% 5000) || '@customer' || (n %% 500) || '.example',"
            " 'orders+acme@bench.example'"
            " FROM generate_series(1, %s) AS n",
            (org["id"], rows),
        )
        conn.execute(
            "INSERT INTO document (org_id, inbound_message_id, part_path, file_name, mime_type,"
            " size_bytes, sha256, storage_key)"
            " SELECT m.org_id, m.id, '2', 'PO-' || substr(m.subject, 16) || '.pdf',"
            " 'application/pdf', 600, m.sha256, 'doc/' || m.id"
            " FROM inbound_message m WHERE m.org_id = %s"
            " AND substr(m.subject, 16)::int %% 3 = 0",
            (org["id"],),
        )
        conn.execute("ALTER TABLE inbound_message ENABLE TRIGGER USER")
        conn.execute("ALTER TABLE document ENABLE TRIGGER USER")
        conn.execute("ANALYZE inbound_message")
        conn.execute("ANALYZE document")
        conn.commit()
        return str(org["id"])


def explain(conn: object, org_id: str, query: str) -> str:
    """The plan of the page's statement, as list_messages builds it (EXPLAIN ANALYZE)."""
    captured: list[tuple[object, object]] = []

    class Recorder:
        def execute(self, statement: object, params: object = None) -> object:
            captured.append((statement, params))
            return conn.execute(statement, params)  # type: ignore[attr-defined]

    message_queries.list_messages(Recorder(), [org_id], parse(query), None, 50)  # type: ignore[arg-type]
    statement, params = captured[0]
    plan = conn.execute(  # type: ignore[attr-defined]
        sql.SQL("EXPLAIN (ANALYZE, BUFFERS OFF, COSTS OFF) {}").format(statement), params
    ).fetchall()
    return "\n".join("    " + row["QUERY PLAN"] for row in plan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print every EXPLAIN ANALYZE")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts its own stack)")
    base = Path(tempfile.mkdtemp(prefix="orderflow-bench-", dir="/tmp"))
    base.chmod(0o755)
    stack = Stack(base, StackOptions(deliver=False))
    try:
        stack.up()
        started = time.monotonic()
        org_id = load(stack, args.rows)
        print(f"loaded {args.rows} messages in {time.monotonic() - started:.0f} s")
        print(f"{'query':40} {'rows':>5} {'median ms':>10} {'max ms':>8}")
        with connect(stack.settings.database_url) as conn:
            for query in QUERIES:
                where = parse(query)
                times = []
                for _ in range(args.repeat):
                    begin = time.perf_counter()
                    page, _cursor = message_queries.list_messages(conn, [org_id], where, None, 50)
                    times.append((time.perf_counter() - begin) * 1000)
                label = query or "(inbox, newest first)"
                print(
                    f"{label:40} {len(page):>5} {statistics.median(times):>10.1f}"
                    f" {max(times):>8.1f}"
                )
                if args.plans:
                    print(explain(conn, org_id, query))
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
