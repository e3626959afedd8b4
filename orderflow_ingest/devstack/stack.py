"""The throwaway local stack: PostgreSQL, Redis, S3, Postfix and our own services.

One object serves `orderflow-ingest dev up`, the demo, the test fixtures and the benchmarks:

    stack = Stack(base_dir, StackOptions()).up()
    ...                       # SMTP to stack.smtp_host:stack.smtp_port, settings in stack.settings
    stack.down()

Everything lives under base_dir and binds 127.0.0.1 on ports chosen at the first start and kept
for later ones (tests stop and restart servers mid-flow; data and port stay). stack.json records
what was started so `Stack.load(base_dir).down()` works from another process.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import (
    Component,
    Context,
    Layout,
    check_reachable,
    check_socket_path,
)
from orderflow_ingest.devstack.errors import StackError
from orderflow_ingest.devstack.options import StackOptions
from orderflow_ingest.devstack.postfix import Postfix
from orderflow_ingest.devstack.postgres import Postgres, ensure_pg_user
from orderflow_ingest.devstack.redis_server import RedisServer
from orderflow_ingest.devstack.s3_server import S3Server
from orderflow_ingest.devstack.services import ApiService, DeliverService, MilterService, Worker
from orderflow_ingest.devstack.state import StackState

__all__ = ["Stack", "StackError", "StackOptions"]

COMPONENT_NAMES = ("postgres", "redis", "s3", "postfix", "deliver", "milter", "worker", "api")
BACKENDS = ("postgres", "redis", "s3")
SMTP_HOST = "127.0.0.1"


class Stack:
    def __init__(self, base_dir: Path, options: StackOptions | None = None):
        self.base_dir = Path(base_dir).resolve()
        self.layout = Layout(self.base_dir)
        saved = StackState.load(self.base_dir) if (self.base_dir / "stack.json").exists() else None
        if options is None:
            options = StackOptions.from_dict(saved.options) if saved else StackOptions()
        self.options = options
        state = saved or StackState()
        state.options = options.as_dict()
        self.ctx = Context(self.layout, options, state)
        self.postgres = Postgres(self.ctx)
        self.redis = RedisServer(self.ctx)
        self.s3 = S3Server(self.ctx)
        self.postfix = Postfix(self.ctx)
        self.deliver = DeliverService(self.ctx)
        self.milter = MilterService(self.ctx)
        self.api = ApiService(self.ctx)
        self._settings: Any = None
        self.up_seconds = 0.0

    @classmethod
    def load(cls, base_dir: Path) -> Stack:
        """Reopen a stack that `up()` (perhaps in another process) recorded in stack.json."""
        base = Path(base_dir).resolve()
        if not (base / "stack.json").is_file():
            raise StackError("devstack", f"no stack in {base} (no stack.json)")
        return cls(base)

    # --- starting and stopping -------------------------------------------------------------

    def up(self) -> Stack:
        """Start whatever is not running yet; on any failure stop everything and raise."""
        accounts.require_root()
        started = time.monotonic()
        try:
            self._prepare()
            # Postfix needs nothing else to start and is the slowest part (postfix-script
            # checks the instance); it starts alongside servers, migrations and services.
            with ThreadPoolExecutor(max_workers=1) as pool:
                postfix_started = pool.submit(self.postfix.start)
                try:
                    self._start_backends_and_services()
                finally:
                    postfix_error = postfix_started.exception()
            if postfix_error is not None:
                raise postfix_error
        except BaseException:
            self.down()
            raise
        self.up_seconds = round(time.monotonic() - started, 2)
        return self

    def _start_backends_and_services(self) -> None:
        compile_job = self._compile_bytecode()
        self._parallel([c.start for c in self._own_backends()])
        self._write_env_file()  # a port re-chosen at a first start must reach the file
        self._bootstrap_data()
        if compile_job.wait() != 0:
            raise StackError("devstack", "python -m compileall failed")
        services: list[Component] = []
        if self.options.deliver:
            services.append(self.deliver)
        if self.options.milter:
            services.append(self.milter)
        services.extend(self._workers())
        if self.options.api:
            services.append(self.api)
        self._parallel([service.start for service in services])

    def down(self) -> None:
        """Stop everything this stack started, in reverse order of start.

        Postfix first (no new mail), then our services, then the servers; each group in
        parallel, since weed and the milter take seconds to stop cleanly.
        """
        _quietly(self.postfix.stop)
        services = [self.api, *self._all_workers(), self.milter, self.deliver]
        self._parallel([partial(_quietly, c.stop) for c in services])
        servers = (self.s3, self.redis, self.postgres)
        self._parallel([partial(_quietly, c.stop) for c in servers])
        self.ctx.save()

    def stop_component(self, name: str) -> None:
        for component in self._components(name):
            component.stop()

    def start_component(self, name: str) -> None:
        if name == "worker" and not self._all_workers():
            raise StackError("worker", "this stack has no workers (StackOptions.workers)")
        if name == "api" and "api.port" not in self.ctx.state.ports:
            raise StackError("api", "this stack has no API (StackOptions.api)")
        for component in self._components(name):
            component.start()

    def restart_component(self, name: str) -> None:
        self.stop_component(name)
        self.start_component(name)

    def running(self, name: str) -> bool:
        return all(component.running() for component in self._components(name))

    # --- what tests and the CLI read ------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.layout.config_file

    @property
    def settings(self) -> Any:
        """The validated settings of the env file (the shell's ORDERFLOW_* never leak in)."""
        if self._settings is None:
            from orderflow_ingest.settings import load_migrate_settings

            self._settings = load_migrate_settings(
                str(self.config_path), str(self.migrate_config_path), environ={}
            )
        return self._settings

    @property
    def migrate_config_path(self) -> Path:
        """The schema owner's URL, root-only, as /etc/orderflow/migrate.env on a host."""
        return self.config_path.with_name("migrate.env")

    @property
    def env(self) -> dict[str, str]:
        values = self.setting_values()
        values.update(self.migrate_values())  # a dev shell may run `db migrate` too
        values["ORDERFLOW_DEV_SMTP_HOST"] = self.smtp_host
        values["ORDERFLOW_DEV_SMTP_PORT"] = str(self.smtp_port)
        values["ORDERFLOW_DEV_DIR"] = str(self.base_dir)
        return values

    @property
    def smtp_host(self) -> str:
        return self.options.listen_address or SMTP_HOST

    @property
    def smtp_port(self) -> int:
        return self.ctx.port("postfix.smtp")

    @property
    def api_url(self) -> str:
        """Base URL of the stack's API (its /v1) and web inbox (its /inbox); plain HTTP."""
        return f"http://{SMTP_HOST}:{self.ctx.port('api.port')}"

    @property
    def inbox_url(self) -> str:
        return self.api_url + "/inbox"

    @property
    def maillog_path(self) -> Path:
        return self.layout.log("postfix")

    @property
    def postfix_config_dir(self) -> Path:
        return self.postfix.config_dir

    def component_log(self, name: str) -> Path:
        if name == "worker":
            return self.layout.log("worker-1")
        return self.layout.log(name)

    def postqueue(self) -> list[dict[str, Any]]:
        """`postqueue -j`: one dict per queued message (queue_name, queue_id, recipients...)."""
        return self.postfix.postqueue()

    def flush_queue(self) -> None:
        """Retry deferred mail now instead of at the next queue run."""
        self.postfix.flush()

    def wait_for_empty_queue(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            queue = self.postqueue()
            if not queue:
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    "postfix",
                    f"queue not empty after {timeout}s: {queue!r}",
                    self.maillog_path,
                )
            time.sleep(0.1)

    def setting_values(self) -> dict[str, str]:
        """Every ORDERFLOW_* setting of the env file, external servers' URLs included."""
        secrets_ = self.ctx.state.secrets
        external = self.options.external
        layout = self.layout
        values: dict[str, str] = {}
        if self.options.uses_external("ORDERFLOW_DATABASE_URL"):
            values["ORDERFLOW_DATABASE_URL"] = external["ORDERFLOW_DATABASE_URL"]
        else:
            values["ORDERFLOW_DATABASE_URL"] = self.postgres.urls()[0]
        values["ORDERFLOW_REDIS_URL"] = (
            external["ORDERFLOW_REDIS_URL"]
            if self.options.uses_external("ORDERFLOW_REDIS_URL")
            else self.redis.url()
        )
        if self.options.uses_external("ORDERFLOW_S3_ENDPOINT_URL"):
            for name in (
                "ORDERFLOW_S3_ENDPOINT_URL",
                "ORDERFLOW_S3_ACCESS_KEY",
                "ORDERFLOW_S3_SECRET_KEY",
                "ORDERFLOW_S3_REGION",
            ):
                if external.get(name):
                    values[name] = external[name]
        else:
            values["ORDERFLOW_S3_ENDPOINT_URL"] = self.s3.endpoint()
            values["ORDERFLOW_S3_ACCESS_KEY"] = secrets_["s3_access"]
            values["ORDERFLOW_S3_SECRET_KEY"] = secrets_["s3_secret"]
        values["ORDERFLOW_S3_BUCKET"] = (
            external.get("ORDERFLOW_S3_BUCKET") or self.options.s3_bucket
        )
        values["ORDERFLOW_INGEST_DOMAINS"] = self.options.ingest_domain
        values["ORDERFLOW_DELIVER_SOCKET"] = str(layout.deliver_socket)
        values["ORDERFLOW_MILTER_SOCKET"] = str(layout.milter_socket)
        values["ORDERFLOW_SPOOL_DIR"] = str(layout.spool)
        values["ORDERFLOW_POSTFIX_CONFIG_DIR"] = str(self.postfix.config_dir)
        values["ORDERFLOW_METRICS_LISTEN"] = f"127.0.0.1:{self.ctx.port('metrics.port')}"
        if self.options.api:
            # Plain HTTP on loopback: the cookie cannot be Secure, and sign-in links name
            # this port (never a request's Host header).
            values["ORDERFLOW_API_LISTEN"] = f"127.0.0.1:{self.ctx.port('api.port')}"
            values["ORDERFLOW_INBOX_PUBLIC_URL"] = self.inbox_url
            values["ORDERFLOW_INBOX_COOKIE_SECURE"] = "false"
        values.update(self.options.extra_settings)
        return values

    # --- internals -----------------------------------------------------------------------

    def _own_backends(self) -> list[Component]:
        own: list[Component] = []
        if not self.options.uses_external("ORDERFLOW_DATABASE_URL"):
            own.append(self.postgres)
        if not self.options.uses_external("ORDERFLOW_REDIS_URL"):
            own.append(self.redis)
        if not self.options.uses_external("ORDERFLOW_S3_ENDPOINT_URL"):
            own.append(self.s3)
        return own

    def _workers(self) -> list[Worker]:
        return [Worker(self.ctx, index) for index in range(1, self.options.workers + 1)]

    def _all_workers(self) -> list[Worker]:
        """Configured workers plus any recorded ones (so down() never leaves one behind)."""
        indexes = set(range(1, self.options.workers + 1))
        indexes |= {
            int(name.split("-", 1)[1])
            for name in self.ctx.state.processes
            if name.startswith("worker-") and name.split("-", 1)[1].isdigit()
        }
        return [Worker(self.ctx, index) for index in sorted(indexes)]

    def _components(self, name: str) -> list[Component]:
        by_name: dict[str, list[Component]] = {
            "postgres": [self.postgres],
            "redis": [self.redis],
            "s3": [self.s3],
            "postfix": [self.postfix],
            "deliver": [self.deliver],
            "milter": [self.milter],
            "worker": list(self._all_workers()),
            "api": [self.api],
        }
        if name not in by_name:
            raise StackError("devstack", f"unknown component {name!r}; one of {COMPONENT_NAMES}")
        if name in BACKENDS and by_name[name][0] not in self._own_backends():
            raise StackError(name, "uses an external server; the stack does not manage it")
        return by_name[name]

    def _prepare(self) -> None:
        """Users, directories, ports, passwords and the env file: everything before a start."""
        user = self.options.service_user
        accounts.ensure_system_user(user)
        if not self.options.uses_external("ORDERFLOW_DATABASE_URL"):
            ensure_pg_user()
        accounts.make_dir(self.base_dir, 0o755)
        check_reachable(self.base_dir, "the stack directory")
        check_reachable(Path(sys.prefix), "the virtualenv")
        check_reachable(Path(__file__).resolve().parents[1], "the orderflow_ingest package")
        accounts.make_dir(self.layout.logs, 0o755)
        # Our services create their sockets here; smtpd (group postfix) may traverse.
        accounts.make_dir(self.layout.run, 0o750, user, "postfix")
        accounts.make_dir(self.layout.spool, 0o700, user)
        for path in (self.layout.deliver_socket, self.layout.milter_socket):
            check_socket_path("devstack", path)
        state = self.ctx.state
        for name in ("pg_super", "pg_owner", "pg_app", "redis", "s3_secret"):
            state.secrets.setdefault(name, secrets.token_urlsafe(24))
        state.secrets.setdefault("s3_access", "orderflow" + secrets.token_hex(6))
        self.ctx.allocate_ports("metrics", ("port",))
        if self.options.smtp_port:  # a test host in a network namespace (tests/netns.py)
            self.ctx.state.ports["postfix.smtp"] = self.options.smtp_port
        self.ctx.allocate_ports("postfix", ("smtp",))
        self.ctx.allocate_ports("postgres", ("port",))
        self.ctx.allocate_ports("redis", ("port",))
        self.ctx.allocate_ports("s3", ("s3",))
        if self.options.api and not self.api.running():
            # Checked now, not at the API's start: the env file names the port. Taken by
            # someone else before the first start: another one is chosen.
            self.ctx.ports("api", ("port",))
        self._write_env_file()
        # The delivery service reads Postfix's limits (postconf) when it starts, which may be
        # before Postfix's own start gets to it: the configuration exists from here on. (A
        # running Postfix keeps its configuration and its port.)
        if not self.postfix.running():
            self.postfix.render()

    def migrate_values(self) -> dict[str, str]:
        """What migrate.env holds: the schema owner's URL, kept out of the services' file."""
        if self.options.uses_external("ORDERFLOW_DATABASE_URL"):
            owner = self.options.external.get("ORDERFLOW_MIGRATE_DATABASE_URL", "")
        else:
            owner = self.postgres.urls()[1]
        return {"ORDERFLOW_MIGRATE_DATABASE_URL": owner} if owner else {}

    def _write_env_file(self) -> None:
        """The settings file pipe(8)'s deliver reads: root-owned, readable by the service group."""
        lines = [
            "# orderflow-ingest settings of the devstack in " + str(self.base_dir),
            "# Written by `orderflow-ingest dev up`; secrets are throwaway.",
        ]
        lines.extend(f"{name}={value}" for name, value in sorted(self.setting_values().items()))
        accounts.write_file(
            self.config_path, "\n".join(lines) + "\n", 0o640, "root", self.options.service_user
        )
        owner_lines = ["# The schema owner's URL: read by `db migrate` only, root only."]
        owner_lines.extend(f"{name}={value}" for name, value in self.migrate_values().items())
        accounts.write_file(
            self.migrate_config_path, "\n".join(owner_lines) + "\n", 0o600, "root", "root"
        )
        self._settings = None
        from orderflow_ingest.settings import SettingsError

        try:
            self.settings  # noqa: B018  (validates the file as every service will read it)
        except SettingsError as error:
            raise StackError(
                "devstack", f"invalid settings in {self.config_path}: {error}"
            ) from None

    def _compile_bytecode(self) -> subprocess.Popen[bytes]:
        """The pipe user cannot write __pycache__: compile once here so each message is cheap."""
        package = Path(__file__).resolve().parents[1]
        return subprocess.Popen(
            [sys.executable, "-m", "compileall", "-q", str(package)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _bootstrap_data(self) -> None:
        """Schema, orgs and bucket: idempotent, so every up runs it (on external servers too)."""
        from orderflow_ingest import db, orgs, storage

        settings = self.settings
        try:
            db.migrate(settings)
            with db.connect(settings.migrate_url) as conn:
                for slug in self.options.org_slugs:
                    if orgs.org_by_slug(conn, slug) is None:
                        orgs.add_org(conn, slug, slug.replace("-", " ").title())
                conn.commit()
        except Exception as error:
            raise StackError("postgres", f"migrations or org set-up failed: {error}") from error
        try:
            client = storage.make_client(settings)
            storage.ensure_bucket(client, settings.s3_bucket)
        except Exception as error:
            raise StackError(
                "s3", f"creating bucket {settings.s3_bucket} failed: {error}"
            ) from error

    def _parallel(self, jobs: list[Callable[[], None]]) -> None:
        """Run start/stop jobs in threads: servers start independently (and weed stops slowly)."""
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            errors = [f.exception() for f in futures]
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first


def _quietly(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception as error:  # down() must go on stopping the rest
        print(f"devstack: {error}", file=sys.stderr)
