"""The restore drill (issue 16, "Backups and restore"), as docs/operations.md tells an
operator to do it: real mail through Postfix to PARSED with documents (a stack of its own
with a worker, so "every row" means exactly this drill's rows), `pg_dump --format=custom` as
the schema owner, a fresh database created by the DBA, `pg_restore` as the owner, then
`orderflow-ingest verify-storage` against the restored database: every message's raw object
and every document's object is found with the recorded size and sha256.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mime_builders import PNG
from ops_support import cli, cli_json
from psycopg import sql
from psycopg.rows import dict_row
from samples import address, minimal_pdf, order_email
from support_wait import wait_for

from orderflow_ingest.devstack import postgres
from orderflow_ingest.storage import make_client

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ORDERS = 3
RESTORED = f"orderflow_restore_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def drill_stack(make_stack: Callable[..., Any]) -> Any:
    return make_stack(workers=1)


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)


def _urls(stack: Any, database: str) -> dict[str, str]:
    """Owner, runtime and superuser (the DBA's) URLs of `database` on the stack's server."""
    port = stack.ctx.port("postgres.port")
    secrets = stack.ctx.state.secrets
    return {
        "owner": postgres.url(postgres.OWNER_ROLE, secrets["pg_owner"], port, database),
        "runtime": postgres.url(postgres.RUNTIME_ROLE, secrets["pg_app"], port, database),
        "super": postgres.url(postgres.PG_USER, secrets["pg_super"], port, "postgres"),
    }


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{argv[0]}: {result.stderr[-2000:]}"


@pytest.fixture(scope="module")
def restored(drill_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Mail to PARSED, dump, fresh database, restore; yields the restored database's name."""
    stack = drill_stack
    ids = []
    for number in range(ORDERS):
        msg = order_email(
            to=address("acme"),
            attachments=[
                (f"PO-{number}.pdf", "application/pdf", minimal_pdf(f"PO {number}")),
                ("photo.png", "image/png", PNG),
            ],
        )
        stack_send(stack, msg)
        ids.append(msg["Message-ID"])
    with _connect(stack.settings.database_url) as conn:

        def all_parsed() -> bool:
            row = conn.execute(
                "SELECT count(*) AS n FROM inbound_message"
                " WHERE source_message_id = ANY(%s) AND status = 'PARSED'",
                (ids,),
            ).fetchone()
            return bool(row and row["n"] == ORDERS)

        wait_for(all_parsed, 120, f"{ORDERS} orders to be PARSED by the stack's worker")

    bin_dir = postgres.pg_bin_dir()
    dump = tmp_path_factory.mktemp("drill") / "orderflow.dump"
    source = _urls(stack, postgres.DATABASE)
    target = _urls(stack, RESTORED)
    _run([str(bin_dir / "pg_dump"), "--format=custom", f"--file={dump}", source["owner"]])
    with _connect(source["super"]) as dba:  # what the DBA does once: an empty database
        dba.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(RESTORED), sql.Identifier(postgres.OWNER_ROLE)
            )
        )
        dba.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(RESTORED))
        )
        dba.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(RESTORED), sql.Identifier(postgres.RUNTIME_ROLE)
            )
        )
    _run(
        [
            str(bin_dir / "pg_restore"),
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            f"--dbname={target['owner']}",
            str(Path(dump)),
        ]
    )
    yield RESTORED
    with _connect(source["super"]) as dba:
        dba.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(RESTORED))
        )


def stack_send(stack: Any, msg: Any) -> None:
    from conftest import send_mail

    send_mail(stack, msg, [address("acme")])


def _restored_env(stack: Any, database: str) -> dict[str, str]:
    urls = _urls(stack, database)
    return {
        "ORDERFLOW_DATABASE_URL": urls["runtime"],
        "ORDERFLOW_MIGRATE_DATABASE_URL": urls["owner"],
    }


def _stored_rows(url: str) -> list[dict[str, Any]]:
    with _connect(url) as conn:
        return conn.execute(
            "SELECT raw_storage_key AS key, sha256, size_bytes FROM inbound_message"
            " WHERE raw_storage_key IS NOT NULL"
            " UNION ALL SELECT storage_key, sha256, size_bytes FROM document"
        ).fetchall()


def test_restore_drill_finds_every_raw_message_and_document_in_the_bucket(
    drill_stack: Any, restored: str
) -> None:
    stack = drill_stack
    urls = _urls(stack, restored)
    rows = _stored_rows(urls["runtime"])  # the runtime role's grants came back with the dump
    source_rows = _stored_rows(stack.settings.database_url)
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in source_rows)
    with _connect(urls["runtime"]) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM inbound_message WHERE status = 'PARSED') AS parsed,"
            " (SELECT count(*) FROM document) AS documents,"
            " (SELECT count(*) FROM event) AS events"
        ).fetchone()
    assert counts["parsed"] >= ORDERS and counts["documents"] >= 2 * ORDERS
    assert counts["events"] > 0
    # Independently of verify-storage: every object, byte for byte.
    s3 = make_client(stack.settings)
    for row in rows:
        body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["key"])["Body"].read()
        assert len(body) == row["size_bytes"] and hashlib.sha256(body).hexdigest() == row["sha256"]
    # The operator's check after a restore.
    env = _restored_env(stack, restored)
    code, report = cli_json(stack, "verify-storage", env=env)
    assert code == 0, report
    assert report["checked"] == len(rows) and report["problems"] == 0
    assert report["bytes"] == sum(row["size_bytes"] for row in rows)
    # The restored schema is current: nothing to migrate.
    migrated = cli(stack, "db", "migrate", env=env)
    assert migrated.returncode == 0 and "schema is up to date" in migrated.stdout


def test_verify_storage_names_every_missing_or_changed_object(
    drill_stack: Any, restored: str
) -> None:
    """A database newer than the bucket copy, or a corrupted object: each one is listed and
    the exit status says so (tampered in the restored copy only, the bucket is untouched)."""
    stack = drill_stack
    urls = _urls(stack, restored)
    with _connect(urls["owner"]) as conn:
        missing = conn.execute(
            "UPDATE document SET storage_key = storage_key || '.gone'"
            " WHERE id = (SELECT id FROM document ORDER BY id LIMIT 1)"
            " RETURNING id::text AS id, storage_key"
        ).fetchone()
        changed = conn.execute(
            "UPDATE inbound_message SET sha256 = repeat('0', 64)"
            " WHERE id = (SELECT id FROM inbound_message WHERE raw_storage_key IS NOT NULL"
            " ORDER BY id LIMIT 1) RETURNING id::text AS id"
        ).fetchone()
    env = _restored_env(stack, restored)
    code, report = cli_json(stack, "verify-storage", env=env)
    assert code == 1 and report["problems"] == 2
    found = {(f["problem"], f["kind"], f["id"]) for f in report["findings"]}
    assert found == {("missing", "document", missing["id"]), ("sha256", "message", changed["id"])}
    text = cli(stack, "verify-storage", env=env)
    assert text.returncode == 1 and missing["storage_key"] in text.stdout
    # --quick looks at presence and size only: the changed hash is not seen.
    code, quick = cli_json(stack, "verify-storage", "--quick", env=env)
    assert code == 1 and [f["problem"] for f in quick["findings"]] == ["missing"]
