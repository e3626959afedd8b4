"""Rotating the runtime database role without a window (docs/operations.md, "Secret rotation",
issue 16): a second login role, `db migrate` with the inventory's new URL grants it exactly
what the first one has, and the old role keeps working until it is dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from ops_support import cli
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from orderflow_ingest import db as dbmod
from orderflow_ingest.devstack.postgres import PG_USER

pytestmark = pytest.mark.stack

# Every right a role can hold on the objects of the schema, as one row per (object, right).
RIGHTS = """
SELECT 'table ' || c.oid::regclass::text AS object, p.priv
  FROM pg_class c
  CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                          'TRIGGER']) AS p(priv)
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
   AND (has_table_privilege(%(role)s, c.oid, p.priv)
        OR (p.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
            AND has_any_column_privilege(%(role)s, c.oid, p.priv)))
UNION ALL
SELECT 'sequence ' || c.oid::regclass::text, p.priv
  FROM pg_class c CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p(priv)
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
   AND has_sequence_privilege(%(role)s, c.oid, p.priv)
UNION ALL
SELECT 'function ' || f.oid::regprocedure::text, 'EXECUTE'
  FROM pg_proc f
 WHERE f.pronamespace = 'public'::regnamespace
   AND has_function_privilege(%(role)s, f.oid, 'EXECUTE')
UNION ALL
SELECT 'schema public', p.priv FROM unnest(ARRAY['USAGE', 'CREATE']) AS p(priv)
 WHERE has_schema_privilege(%(role)s, 'public', p.priv)
"""


def _rights(conn: psycopg.Connection[Any], role: str) -> set[tuple[str, str]]:
    return {(row[0], row[1]) for row in conn.execute(RIGHTS, {"role": role}).fetchall()}


@pytest.fixture
def superuser(stack: Any) -> Iterator[psycopg.Connection[Any]]:
    """The dev stack's PostgreSQL superuser, standing in for the DBA of the runbook."""
    url = make_conninfo(
        stack.settings.migrate_url, user=PG_USER, password=stack.ctx.state.secrets["pg_super"]
    )
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        yield conn


def test_a_second_runtime_role_gets_exactly_the_first_ones_rights_and_both_work(
    stack: Any, superuser: psycopg.Connection[Any]
) -> None:
    settings = stack.settings
    old_role = dbmod.runtime_role(settings)
    assert old_role is not None
    new_role = f"orderflow_app_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    database = conninfo_to_dict(settings.database_url)["dbname"]
    ident = sql.Identifier
    # The runbook's DBA step: a login role that may connect, nothing else.
    superuser.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident(new_role), sql.Literal(password))
    )
    try:
        superuser.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                ident(database), ident(new_role)
            )
        )
        assert ("table inbound_message", "INSERT") not in _rights(superuser, new_role)
        # The inventory's new URL; the playbook's `db migrate` grants sql/grants.sql to it.
        new_url = make_conninfo(settings.database_url, user=new_role, password=password)
        migrate = cli(
            stack,
            "db",
            "migrate",
            "--migrate-config",
            str(stack.migrate_config_path),
            env={"ORDERFLOW_DATABASE_URL": new_url},
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        old_rights = _rights(superuser, old_role)
        assert len(old_rights) > 20
        assert _rights(superuser, new_role) == old_rights
        # Both work at once: hosts switch one at a time.
        for url in (settings.database_url, new_url):
            with psycopg.connect(url, row_factory=dict_row, connect_timeout=10) as conn:
                assert dbmod.runtime_rights_problems(conn) == []
                conn.execute("SELECT count(*) FROM inbound_message").fetchone()
    finally:
        # The runbook's last step, for the role being retired (here the new one, so the
        # stack's own role stays for the other tests).
        superuser.execute(sql.SQL("DROP OWNED BY {}").format(ident(new_role)))
        superuser.execute(sql.SQL("DROP ROLE {}").format(ident(new_role)))
    with psycopg.connect(settings.database_url, row_factory=dict_row, connect_timeout=10) as conn:
        assert dbmod.runtime_rights_problems(conn) == []
    assert _rights(superuser, old_role) == old_rights
