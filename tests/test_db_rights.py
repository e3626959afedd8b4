"""Database rights enforced by PostgreSQL itself (issue 10 item 11), tried as the runtime role.

Every service connects as the runtime role; these tests connect the same way and try what a
compromised service would: reopen a message by hand, rewrite the status history, mark a
migration applied. PostgreSQL must refuse each one, while `reprocess` (through the
SECURITY DEFINER function) still works.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from orderflow_ingest import db as dbmod
from orderflow_ingest import messages

pytestmark = pytest.mark.stack

GRANTS = dbmod.migrations_dir() / dbmod.GRANTS_FILE
# One entry per table or view: "GRANT ... ON [TABLE] name TO {runtime}" or a REVOKE.
ENTRY = re.compile(
    r"^\s*(?:GRANT|REVOKE)\b[^;]*?\bON\s+(?:TABLE\s+|SEQUENCE\s+)?([a-z_][a-z0-9_]*)\s+(?:TO|FROM)\b",
    re.IGNORECASE | re.MULTILINE,
)


# Status history / event log tables (whichever the migrations left as tables): append-only.
APPEND_ONLY = ("inbound_message_event", "event")


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)


@pytest.fixture
def runtime(settings: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with _connect(settings.database_url) as conn:
        yield conn


@pytest.fixture
def owner(settings: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with _connect(settings.migrate_url) as conn:
        yield conn


def _refused(conn: psycopg.Connection[Any], query: str, params: Any = None) -> BaseException:
    """Run `query`; it must fail. Returns the error (the connection stays usable)."""
    with pytest.raises(psycopg.Error) as caught, conn.transaction():
        conn.execute(query, params)
    return caught.value


def _parsed_message(conn: psycopg.Connection[dict[str, Any]]) -> str:
    """A message taken RECEIVED -> STORED -> PARSED by the runtime role, as the services do."""
    row = conn.execute(
        "INSERT INTO inbound_message (org_id, source, source_message_id, received_at, status,"
        " trace_id) SELECT id, 'EMAIL', %s, now(), 'RECEIVED', %s FROM org WHERE slug = 'acme'"
        " RETURNING id::text AS id",
        (f"<{uuid.uuid4().hex}@rights.example>", uuid.uuid4().hex),
    ).fetchone()
    assert row is not None
    message_id = str(row["id"])
    assert messages.mark_stored(conn, message_id, f"raw/{message_id}")  # type: ignore[arg-type]
    messages.mark_parsed(conn, message_id)  # type: ignore[arg-type]
    return message_id


def _status(conn: psycopg.Connection[dict[str, Any]], message_id: str) -> str:
    row = conn.execute("SELECT status FROM inbound_message WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def test_item11_every_table_and_view_has_a_grants_entry(owner: Any) -> None:
    """A table added by a migration without its line in sql/grants.sql fails here."""
    declared = {name.lower() for name in ENTRY.findall(GRANTS.read_text(encoding="utf-8"))}
    relations = owner.execute(
        """
        SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.objid = c.oid AND d.deptype = 'e')
        """
    ).fetchall()
    names = {row["relname"] for row in relations}
    assert {"org", "inbound_message", "inbound_message_event", "schema_migration"} <= names
    missing = sorted(names - declared)
    assert not missing, f"add a line for each to {GRANTS}: {missing}"


def test_item11_history_is_append_only_and_migrations_read_only(owner: Any, settings: Any) -> None:
    role = dbmod.runtime_role(settings)
    assert role is not None
    rights = {
        row["relname"]: {
            privilege
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
            if row[privilege.lower()]
        }
        for row in owner.execute(
            """
            SELECT c.relname,
              has_table_privilege(%(r)s, c.oid, 'SELECT') AS select,
              has_table_privilege(%(r)s, c.oid, 'INSERT') AS insert,
              has_table_privilege(%(r)s, c.oid, 'UPDATE') AS update,
              has_table_privilege(%(r)s, c.oid, 'DELETE') AS delete,
              has_table_privilege(%(r)s, c.oid, 'TRUNCATE') AS truncate
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
            """,
            {"r": role},
        )
    }
    history = [name for name in APPEND_ONLY if name in rights]
    assert history, f"none of {APPEND_ONLY} is a table"
    for name in history:
        assert rights[name] == {"SELECT", "INSERT"}, name
    assert rights["schema_migration"] == {"SELECT"}
    assert rights["inbound_message"] == {"SELECT", "INSERT", "UPDATE"}
    assert not any("DELETE" in granted or "TRUNCATE" in granted for granted in rights.values())


def test_item11_runtime_cannot_reopen_even_with_the_old_session_setting(runtime: Any) -> None:
    message_id = _parsed_message(runtime)
    with runtime.transaction():
        runtime.execute("SET LOCAL orderflow.allow_reprocess = on")
        with pytest.raises(errors.CheckViolation), runtime.transaction():
            runtime.execute(
                "UPDATE inbound_message SET status = 'STORED' WHERE id = %s", (message_id,)
            )
    assert _status(runtime, message_id) == "PARSED"
    # A temporary table named pg_class is searched before pg_catalog: it must not help.
    with runtime.transaction():
        runtime.execute("CREATE TEMP TABLE pg_class (oid oid, relowner oid) ON COMMIT DROP")
        runtime.execute(
            "INSERT INTO pg_temp.pg_class SELECT 'inbound_message'::regclass::oid,"
            " (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)"
        )
        with pytest.raises(errors.CheckViolation), runtime.transaction():
            runtime.execute(
                "UPDATE inbound_message SET status = 'STORED' WHERE id = %s", (message_id,)
            )
    # Nor may it replace the function or the trigger.
    assert isinstance(
        _refused(runtime, "ALTER TABLE inbound_message DISABLE TRIGGER inbound_message_transition"),
        errors.InsufficientPrivilege,
    )
    assert isinstance(
        _refused(
            runtime,
            "CREATE OR REPLACE FUNCTION orderflow_reprocess(message_id uuid, reason text)"
            " RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        ),
        errors.InsufficientPrivilege,
    )
    assert _status(runtime, message_id) == "PARSED"

    # The sanctioned way still works, and says why in the history.
    assert messages.reopen_for_reprocess(runtime, message_id, "test: rights")
    assert _status(runtime, message_id) == "STORED"
    history = runtime.execute(
        "SELECT status, error_json FROM inbound_message_event"
        " WHERE inbound_message_id = %s ORDER BY id",
        (message_id,),
    ).fetchall()
    assert [h["status"] for h in history] == ["RECEIVED", "STORED", "PARSED", "STORED"]
    assert history[-1]["error_json"]["reprocess"] == "test: rights"
    # Once: a STORED message is not reopened again.
    assert not messages.reopen_for_reprocess(runtime, message_id, "again")


def _history_tables(conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_catalog.pg_class WHERE relkind = 'r'"
        " AND relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
        (list(APPEND_ONLY),),
    ).fetchall()
    names = [row["relname"] for row in rows]
    assert names, f"none of {APPEND_ONLY} is a table"
    return names


def test_item11_runtime_cannot_rewrite_history(runtime: Any) -> None:
    message_id = _parsed_message(runtime)
    queries = [
        "DELETE FROM document WHERE inbound_message_id = %s",
        "DELETE FROM inbound_message WHERE id = %s",
    ]
    for table in _history_tables(runtime):
        queries += [
            f"UPDATE {table} SET inbound_message_id = inbound_message_id"
            " WHERE inbound_message_id = %s",
            f"DELETE FROM {table} WHERE inbound_message_id = %s",
        ]
        assert isinstance(_refused(runtime, f"TRUNCATE {table}"), errors.InsufficientPrivilege)
        assert isinstance(
            _refused(runtime, f"ALTER TABLE {table} ADD COLUMN x int"),
            errors.InsufficientPrivilege,
        )
    for query in queries:
        assert isinstance(_refused(runtime, query, (message_id,)), errors.InsufficientPrivilege)
    assert isinstance(
        _refused(runtime, "TRUNCATE inbound_message CASCADE"), errors.InsufficientPrivilege
    )
    count = runtime.execute(
        "SELECT count(*) AS n FROM inbound_message_event WHERE inbound_message_id = %s",
        (message_id,),
    ).fetchone()
    assert count["n"] == 3


def test_item11_runtime_cannot_write_schema_migration_or_the_schema(runtime: Any) -> None:
    assert isinstance(
        _refused(runtime, "INSERT INTO schema_migration (version) VALUES ('999_evil.sql')"),
        errors.InsufficientPrivilege,
    )
    assert isinstance(
        _refused(runtime, "DELETE FROM schema_migration WHERE version = '002_runtime_rights.sql'"),
        errors.InsufficientPrivilege,
    )
    assert isinstance(
        _refused(runtime, "UPDATE schema_migration SET applied_at = now()"),
        errors.InsufficientPrivilege,
    )
    assert isinstance(
        _refused(runtime, "CREATE TABLE public.evil (id int)"), errors.InsufficientPrivilege
    )
    assert isinstance(
        _refused(runtime, "ALTER TABLE inbound_message ADD COLUMN x int"),
        errors.InsufficientPrivilege,
    )
    # What doctor needs: reading the applied migrations.
    applied = {r["version"] for r in runtime.execute("SELECT version FROM schema_migration")}
    assert "002_runtime_rights.sql" in applied


def test_item11_migrate_takes_back_rights_granted_by_hand(owner: Any, settings: Any) -> None:
    """grants.sql is the whole truth: a right given outside it is gone after `db migrate`."""
    role = dbmod.runtime_role(settings)
    assert role is not None
    table = _history_tables(owner)[0]
    ident = psycopg.sql.Identifier
    owner.execute(
        psycopg.sql.SQL("GRANT DELETE, UPDATE ON {} TO {}").format(ident(table), ident(role))
    )

    def rights() -> dict[str, bool]:
        return {
            right: owner.execute(
                "SELECT has_table_privilege(%s, %s::regclass, %s) AS ok", (role, table, right)
            ).fetchone()["ok"]
            for right in ("DELETE", "UPDATE", "INSERT")
        }

    assert rights() == {"DELETE": True, "UPDATE": True, "INSERT": True}
    assert dbmod.migrate(settings) == []
    assert rights() == {"DELETE": False, "UPDATE": False, "INSERT": True}


def test_item11_grants_quote_the_role_name(owner: Any) -> None:
    text = dbmod.grants_sql('app"; DROP TABLE org; --').as_string(owner)
    assert '"app""; DROP TABLE org; --"' in text
    assert "{runtime}" not in text.split("\n-- Migrations bookkeeping", 1)[1]


def test_item11_doctor_flags_services_connected_as_the_schema_owner(
    runtime: Any, owner: Any
) -> None:
    assert dbmod.runtime_rights_problems(runtime) == []
    assert dbmod.runtime_rights_problems(owner) == ["owns the schema", "may write schema_migration"]


def test_item11_doctor_checks_the_database_rights(stack: Any, settings: Any) -> None:
    from ops_support import cli_json

    _, checks = cli_json(stack, "doctor")
    (rights,) = [check for check in checks if check["name"] == "database rights"]
    assert rights["status"] == "ok", rights
    _, checks = cli_json(stack, "doctor", env={"ORDERFLOW_DATABASE_URL": settings.migrate_url})
    (rights,) = [check for check in checks if check["name"] == "database rights"]
    assert rights["status"] == "fail" and "owns the schema" in rights["detail"], rights
    assert settings.migrate_url not in str(checks)  # no secret in the report
