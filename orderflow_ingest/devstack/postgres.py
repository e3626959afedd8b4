"""A throwaway PostgreSQL cluster: initdb once, pg_ctl start/stop, roles as in production.

PostgreSQL refuses to run as root, so the cluster belongs to the `postgres` system user. It
listens on 127.0.0.1 only, with passwords (scram) for every role: an owner role that runs the
migrations and a runtime role that may only read and write rows, as on a real host.
"""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import Component
from orderflow_ingest.devstack.processes import ProcessRef, in_netns, listens_on

PG_USER = "postgres"
DATABASE = "orderflow"
OWNER_ROLE = "orderflow_owner"
# Postfix's own role: SELECT on the view postfix_custom_domain only (sql/009, issue 13).
POSTFIX_ROLE = "orderflow_postfix"


def postfix_role_password(ctx: Any) -> str:
    """The throwaway password of Postfix's database role, made once per stack."""
    import secrets

    with ctx._lock:
        return str(ctx.state.secrets.setdefault("pg_postfix", secrets.token_urlsafe(24)))


RUNTIME_ROLE = "orderflow_app"
START_TIMEOUT = 30


def pg_bin_dir() -> Path:
    """The newest installed server (Debian keeps each major version under its own bin dir)."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    if not candidates:
        raise FileNotFoundError("no PostgreSQL server found under /usr/lib/postgresql/*/bin")
    return Path(max(candidates, key=lambda path: int(Path(path).parts[4]))).parent


def url(
    user: str, password: str, port: int, database: str = DATABASE, host: str = "127.0.0.1"
) -> str:
    return f"postgresql://{user}:{password}@{host}:{port}/{database}"


class Postgres(Component):
    name = "postgres"
    group_leader = False  # pg_ctl starts the postmaster; pg_ctl stop is the way to stop it

    @property
    def home(self) -> Path:
        return self.ctx.layout.base / "postgres"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def port(self) -> int:
        return self.ctx.ports(self.name, ("port",))["port"]

    def urls(self) -> tuple[str, str]:
        """(runtime URL, owner URL)."""
        port = self.ctx.port("postgres.port")
        secrets = self.ctx.state.secrets
        host = self.ctx.options.listen_address
        return (
            url(RUNTIME_ROLE, secrets["pg_app"], port, host=host),
            url(OWNER_ROLE, secrets["pg_owner"], port, host=host),
        )

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        argv, user = in_netns(self.ctx.options.netns, argv, PG_USER)
        return subprocess.run(
            argv,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            cwd=self.home,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )

    def _initdb(self, bin_dir: Path, port: int) -> None:
        accounts.make_dir(self.home, 0o700, PG_USER)
        pwfile = accounts.write_file(
            self.home / "pwfile", self.ctx.state.secrets["pg_super"] + "\n", 0o600, PG_USER
        )
        try:
            result = self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "--username",
                    PG_USER,
                    "--pwfile",
                    str(pwfile),
                    "--auth",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                    "--no-sync",  # a throwaway cluster; saves seconds at every first start
                    "--no-instructions",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise self.fail(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        socket_dir = accounts.make_dir(self.home / "socket", 0o700, PG_USER)
        listen = self.ctx.options.listen_address
        if listen != "127.0.0.1":  # a test host in a network namespace: its private link
            with (self.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                hba.write("host all all samenet scram-sha-256\n")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# orderflow devstack\n"
                f"listen_addresses = '{listen}'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{socket_dir}'\n"
                "max_connections = 200\n"
                "log_min_messages = warning\n"
                "log_connections = off\n"
            )

    def _start(self) -> None:
        bin_dir = pg_bin_dir()
        port = self.port()
        if not (self.data / "PG_VERSION").is_file():
            self._initdb(bin_dir, port)
        accounts.touch(self.log, 0o640, PG_USER)
        result = self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "start",
            ],
            timeout=START_TIMEOUT + 10,
        )
        pid = self._postmaster_pid()
        ref = ProcessRef.of(pid) if pid else None
        if result.returncode != 0 or pid is None or ref is None:
            raise self.fail(
                f"pg_ctl start failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        self.ctx.record(self.name, ref, None)
        if not listens_on(pid, port):
            raise self.fail(f"port {port} does not belong to the postmaster we started (pid {pid})")
        if not self.ctx.state.done.get("postgres.roles"):
            self._create_roles(port)
        self._ensure_postfix_role(port)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _create_roles(self, port: int) -> None:
        secrets = self.ctx.state.secrets
        with psycopg.connect(
            url(PG_USER, secrets["pg_super"], port, "postgres", self.ctx.options.listen_address),
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            for role, password in (
                (OWNER_ROLE, secrets["pg_owner"]),
                (RUNTIME_ROLE, secrets["pg_app"]),
            ):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE)
                )
            )
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(DATABASE))
            )
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(RUNTIME_ROLE)
                )
            )
        with self.ctx._lock:
            self.ctx.state.done["postgres.roles"] = True
        self.ctx.save()

    def _ensure_postfix_role(self, port: int) -> None:
        """Postfix's role (proxy:pgsql: custom domains), before migrations grant it the view."""
        password = postfix_role_password(self.ctx)
        with psycopg.connect(
            url(
                PG_USER,
                self.ctx.state.secrets["pg_super"],
                port,
                "postgres",
                self.ctx.options.listen_address,
            ),
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (POSTFIX_ROLE,))
            verb = "ALTER" if exists.fetchone() else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(POSTFIX_ROLE), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(POSTFIX_ROLE)
                )
            )

    def stop(self) -> None:
        ref = self.ctx.ref(self.name)
        if ref is not None and ref.alive():
            self._run(
                [
                    str(pg_bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "20",
                    "stop",
                ],
                timeout=30,
            )
        super().stop()  # SIGTERM/SIGKILL only if pg_ctl did not manage


def ensure_pg_user() -> None:
    if not accounts.user_exists(PG_USER):
        raise FileNotFoundError("the postgres system user is missing (apt-get install postgresql)")
