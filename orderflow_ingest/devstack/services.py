"""Our own long-running programs: the delivery service, the milter, RQ workers and the API.

They run as the unprivileged service user, as in production, from the virtualenv's
`orderflow-ingest` script with `--config` pointing at the stack's env file, and with an
environment stripped of every ORDERFLOW_* variable of the shell that started the stack
(the env file is the one source of settings, as it is for pipe(8)).
"""

from __future__ import annotations

from pathlib import Path

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import Component, Context, check_socket_path, venv_bin
from orderflow_ingest.devstack.processes import listens_on, port_is_free, spawn, wait_until

START_TIMEOUT = 30


def service_env() -> dict[str, str]:
    return {
        "PATH": f"{venv_bin('')}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # the service user cannot write __pycache__ anyway
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe a cloud metadata endpoint
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


class Service(Component):
    """`orderflow-ingest <command> --config <env file>`, ready when its socket accepts."""

    command = ""
    umask = 0o027

    def socket_path(self) -> Path | None:
        return None

    def argv(self) -> list[str]:
        return [
            str(venv_bin("orderflow-ingest")),
            self.command,
            "--config",
            str(self.ctx.layout.config_file),
        ]

    def _start(self) -> None:
        sock = self.socket_path()
        if sock is not None:
            check_socket_path(self.name, sock)
            sock.unlink(missing_ok=True)  # a stale socket of a killed run
        user = self.ctx.options.service_user
        accounts.touch(self.log, 0o640, user)
        popen, ref = spawn(
            self.argv(),
            self.log,
            service_env(),
            self.ctx.layout.run,
            user=user,
            umask=self.umask,
            netns=self.ctx.options.netns,
        )
        self.ctx.record(self.name, ref, popen)
        if not wait_until(self.ready, START_TIMEOUT, 0.05, alive=ref.alive):
            if not ref.alive():
                raise self.fail(f"`orderflow-ingest {self.command}` exited during start-up")
            raise self.fail(f"not ready within {START_TIMEOUT}s")

    def ready(self) -> bool:
        path = self.socket_path()
        if path is None:
            return True
        ref = self.ctx.ref(self.name)
        return ref is not None and _listening(path, ref.pid)


class DeliverService(Service):
    name = "deliver"
    command = "deliver-service"

    def socket_path(self) -> Path:
        return self.ctx.layout.deliver_socket


class MilterService(Service):
    name = "milter"
    command = "milter"
    # smtpd (user postfix) must connect: the socket may be world-writable because the run
    # directory (service user, group postfix, 0750) is what keeps everyone else out.
    umask = 0o000

    def socket_path(self) -> Path:
        return self.ctx.layout.milter_socket


class Worker(Service):
    """One RQ worker; ready once it has registered itself in Redis."""

    command = "worker"

    def __init__(self, ctx: Context, index: int):
        super().__init__(ctx)
        self.name = f"worker-{index}"

    @property
    def log(self) -> Path:
        return self.ctx.layout.log(self.name)

    def ready(self) -> bool:
        ref = self.ctx.ref(self.name)
        if ref is None:
            return False
        try:
            from orderflow_ingest.job_queue import make_redis
            from orderflow_ingest.settings import load_settings

            settings = load_settings(str(self.ctx.layout.config_file), environ={})
            from rq import Worker as RqWorker

            with make_redis(settings) as redis:
                return any(worker.pid == ref.pid for worker in RqWorker.all(connection=redis))
        except Exception:
            return False


class ApiService(Service):
    """`orderflow-ingest api`: the HTTP API (/v1) and the web inbox (/inbox), one process.

    It listens on ORDERFLOW_API_LISTEN of the env file (the stack's `api.port`); ready once
    that port is held by the process we started.
    """

    name = "api"
    command = "api"

    @property
    def port(self) -> int:
        return self.ctx.port("api.port")

    def _start(self) -> None:
        # The env file names this port (Stack._prepare chose it): it must be free now.
        if not port_is_free(self.port):
            raise self.fail(f"port {self.port} (api.port) is in use by another process")
        super()._start()

    def ready(self) -> bool:
        ref = self.ctx.ref(self.name)
        return ref is not None and listens_on(ref.pid, self.port)


def _listening(path: Path, pid: int | str = "self") -> bool:
    """Whether a unix socket at `path` is listening, read from /proc/<pid>/net/unix (the
    table of that process's network namespace).

    Checked without connecting: a probe connection would show up in the service's own log
    as a client that hung up.
    """
    if not path.exists():
        return False
    wanted = str(path)
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return True
    for line in lines:
        fields = line.split(None, 7)
        # Flags 00010000 is __SO_ACCEPTCON: the socket is listening.
        if len(fields) == 8 and fields[7] == wanted and int(fields[3], 16) & 0x10000:
            return True
    return False
