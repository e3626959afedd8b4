"""A throwaway Redis: loopback only, a password, and an append-only file.

The AOF (fsync every second, flushed on a clean shutdown) is what lets tests stop Redis in the
middle of a flow and find the queued RQ jobs again after the restart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import Component
from orderflow_ingest.devstack.processes import listens_on, spawn, wait_until

START_TIMEOUT = 15


def url(password: str, port: int, host: str = "127.0.0.1") -> str:
    return f"redis://:{password}@{host}:{port}/0"


class RedisServer(Component):
    name = "redis"

    @property
    def home(self) -> Path:
        return self.ctx.layout.base / "redis"

    def url(self) -> str:
        return url(
            self.ctx.state.secrets["redis"],
            self.ctx.port("redis.port"),
            self.ctx.options.listen_address,
        )

    def _start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = self.ctx.ports(self.name, ("port",))["port"]
        accounts.make_dir(self.home, 0o700)
        conf = accounts.write_file(
            self.home / "redis.conf",
            "\n".join(
                [
                    f"bind {self.ctx.options.listen_address}",
                    "protected-mode yes",
                    f"port {port}",
                    f"requirepass {self.ctx.state.secrets['redis']}",
                    f"dir {self.home}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    "loglevel warning",
                    f"logfile {self.log}",
                    "",
                ]
            ),
            0o600,
        )
        popen, ref = spawn(
            [binary, str(conf)],
            self.log,
            {"PATH": "/usr/bin:/bin"},
            self.home,
            netns=self.ctx.options.netns,
        )
        self.ctx.record(self.name, ref, popen)
        client = redis.Redis.from_url(self.url(), socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        try:
            if not wait_until(answers, START_TIMEOUT, alive=ref.alive):
                raise self.fail(f"no answer on 127.0.0.1:{port} within {START_TIMEOUT}s")
        finally:
            client.close()
        if not listens_on(ref.pid, port):
            raise self.fail(f"port {port} does not belong to the redis-server we started")
