"""PostgreSQL access: connections, the pool long-running services share, and migrations.

Queries live with the entity they serve (orgs, messages, documents); this module only knows
how to reach the database and how to bring its schema up to date.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from orderflow_ingest.settings import Settings

Conn = psycopg.Connection[dict[str, Any]]
Pool = ConnectionPool[Conn]
MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# The runtime role's rights, declared per table in one file re-applied by every `db migrate`.
GRANTS_FILE = "grants.sql"
RUNTIME_PLACEHOLDER = "runtime"


def connect(url: str, timeout: float = 10) -> Conn:
    """One connection; the statement timeout keeps a stuck query from holding a delivery."""
    return psycopg.connect(
        url,
        connect_timeout=max(1, int(timeout)),
        options=f"-c statement_timeout={int(timeout * 1000)}",
        row_factory=dict_row,
    )


def make_pool(settings: Settings, max_size: int, name: str) -> Pool:
    """A pool for long-running services.

    Connections are not checked on every checkout (that costs a round trip per message);
    a connection broken by a PostgreSQL restart is discarded when it fails, and a caller that
    must not fail on it checks `is_broken_connection` and retries once with a fresh one (as
    pipe/ingest.deliver does).
    """
    timeout = settings.backend_timeout
    return ConnectionPool(
        settings.database_url,
        connection_class=Conn,
        min_size=1,
        max_size=max_size,
        name=name,
        timeout=timeout,
        open=False,
        reconnect_timeout=0,
        kwargs={
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
            "row_factory": dict_row,
            "autocommit": False,
        },
    )


def migrations_dir() -> Path:
    """sql/ of a checkout, or the copy packaged inside an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("orderflow_ingest") / "sql"))


def pending_migrations(conn: Conn) -> list[Path]:
    applied = {row["version"] for row in conn.execute("SELECT version FROM schema_migration")}
    return [
        path
        for path in sorted(migrations_dir().glob("*.sql"))
        if path.name not in applied and path.name != GRANTS_FILE
    ]


def migrate(settings: Settings) -> list[str]:
    """Apply every pending migration, each in its own transaction, then grant runtime rights.

    Serialised by an advisory lock, so two hosts deploying at once do not race.
    """
    applied: list[str] = []
    with connect(settings.migrate_url, timeout=60) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('orderflow-ingest migrate'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.commit()
        for path in pending_migrations(conn):
            if not MIGRATION_NAME.match(path.name):
                raise RuntimeError(f"migration file name {path.name} is not NNN_name.sql")
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (path.name,))
            applied.append(path.name)
        grant_runtime_rights(conn, settings)
        conn.commit()
    return applied


def runtime_role(settings: Settings) -> str | None:
    """The role the services connect as, or None when it is the schema owner itself."""
    runtime_user = conninfo_to_dict(settings.database_url).get("user")
    owner_user = conninfo_to_dict(settings.migrate_url).get("user")
    if not runtime_user or runtime_user == owner_user:
        return None
    return str(runtime_user)


def grants_sql(role: str) -> sql.Composed:
    """sql/grants.sql with {runtime} bound to `role` as a quoted identifier (never pasted)."""
    text = (migrations_dir() / GRANTS_FILE).read_text(encoding="utf-8")
    return sql.SQL(text).format(**{RUNTIME_PLACEHOLDER: sql.Identifier(role)})


def grant_runtime_rights(conn: Conn, settings: Settings) -> None:
    """Take every right from the runtime role, then grant exactly what sql/grants.sql lists.

    One transaction: the services never see the moment between the REVOKE and the GRANTs.
    """
    role = runtime_role(settings)
    if role is None:
        return
    with conn.transaction():
        conn.execute(grants_sql(role))


def runtime_rights_problems(conn: Conn) -> list[str]:
    """What the connected role may do that a service's role must not (empty: least privilege).

    `doctor` runs it as the runtime role: a host whose ORDERFLOW_DATABASE_URL names the schema
    owner or a superuser has no database-enforced limits at all.
    """
    row = conn.execute(
        """
        SELECT r.rolsuper AS superuser,
          coalesce(has_table_privilege(to_regclass('public.schema_migration'), 'INSERT'), false)
            AS writes_migrations,
          coalesce(pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                WHERE c.oid = to_regclass('public.inbound_message')), 'USAGE'),
                   false) AS owns_schema
        FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
        """
    ).fetchone()
    if row is None:
        return []
    problems = []
    if row["superuser"]:
        problems.append("is a superuser")
    if row["owns_schema"]:
        problems.append("owns the schema")
    if row["writes_migrations"]:
        problems.append("may write schema_migration")
    return problems


def schema_is_current(conn: Conn) -> bool:
    try:
        return not pending_migrations(conn)
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return False


def is_broken_connection(error: BaseException) -> bool:
    """A connection that died under us (server restart): worth one retry on a fresh one."""
    return isinstance(error, psycopg.OperationalError) and not isinstance(
        error, psycopg.errors.QueryCanceled
    )
