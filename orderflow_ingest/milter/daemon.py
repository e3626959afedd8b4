"""Start, serve and stop the milter daemon (`orderflow-ingest milter`).

Start-up runs in a fixed order, as dkimpy-milter's does: settings are loaded and validated
(by the caller), logging is set up, shared services are built, the socket is created and given
its owner and mode, privileges are dropped, and only then does libmilter start serving.

libmilter serves from its own thread here (`milter.main()` releases the GIL and runs a thread
per SMTP connection), so the Python main thread is free to handle signals: SIGTERM and SIGINT
stop the milter cleanly, SIGHUP reopens the log file after logrotate moved it. libmilter
blocks those signals in the threads it starts, so the kernel delivers them to the main thread.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import Milter
import milter as libmilter

from orderflow_ingest import metrics
from orderflow_ingest.logs import LOGGER_NAME, log_event, reopen_logs, setup_logging
from orderflow_ingest.outcomes import EX_CONFIG, EX_OK, EX_OSERR, EX_SOFTWARE
from orderflow_ingest.settings import Settings

MILTER_NAME = "orderflow-ingest"
# RCPT look-ups are cached and quick; a few connections serve hundreds of SMTP sessions.
DB_POOL_SIZE = 8
# How long libmilter waits on Postfix before it drops a silent connection.
LIBMILTER_TIMEOUT = 600
SOCKET_MODE = 0o660


class StartupError(Exception):
    """The daemon cannot start; the message says why, the exit status says how."""

    def __init__(self, message: str, status: int = EX_OSERR):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """Where the milter listens: a unix socket path, or an inet port on loopback."""

    spec: str  # for milter.setconn()
    path: Path | None  # the unix socket file, if any


def parse_endpoint(value: str) -> Endpoint:
    """`/path`, `unix:/path`, `local:/path` or `inet:PORT@127.0.0.1` (loopback only)."""
    value = value.strip()
    if value.startswith("/"):
        return Endpoint("unix:" + value, Path(value))
    kind, _, rest = value.partition(":")
    if kind in ("unix", "local") and rest.startswith("/"):
        return Endpoint("unix:" + rest, Path(rest))
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
        if not port.isdigit() or not loopback:
            raise StartupError(
                f"ORDERFLOW_MILTER_SOCKET={value!r}: an inet socket must name a port on "
                "loopback (inet:8891@127.0.0.1); anyone who can reach it can probe org slugs",
                EX_CONFIG,
            )
        return Endpoint(value, None)
    raise StartupError(
        f"ORDERFLOW_MILTER_SOCKET={value!r}: expected a socket path or inet:PORT@127.0.0.1",
        EX_CONFIG,
    )


def load_public_suffix_list(settings: Settings) -> Any:
    """The list DMARC needs, or StartupError (exit 78) naming the setting and the path: no
    list means no correct organizational domain, and no guess is safe (issue 10, item 10)."""
    from orderflow_ingest.milter.orgdomain import PublicSuffixListError, load

    try:
        return load(settings.public_suffix_list)
    except PublicSuffixListError as error:
        raise StartupError(str(error), EX_CONFIG) from None


def build_milter_config(settings: Settings, psl: Any) -> tuple[Any, Any]:
    """(MilterConfig, pool): the services every connection shares."""
    from orderflow_ingest.db import make_pool
    from orderflow_ingest.diskspace import guard_for
    from orderflow_ingest.milter.dns import DnspythonSource
    from orderflow_ingest.milter.handler import MilterConfig
    from orderflow_ingest.milter.recipients import OrgDirectory, pool_domain_lookup, pool_lookup

    pool = make_pool(settings, max_size=DB_POOL_SIZE, name="milter")
    pool.open(wait=False)  # the milter starts (and answers 451) while the database is down
    config = MilterConfig(
        authserv_id=settings.effective_authserv_id,
        local_part=settings.local_part,
        domains=settings.ingest_domains,
        directory=OrgDirectory(
            pool_lookup(pool, settings.milter_lookup_timeout),
            ttl=settings.org_cache_ttl,
            domain_lookup=pool_domain_lookup(pool, settings.milter_lookup_timeout),
        ),
        dns=DnspythonSource(
            settings.dns_servers,
            cache_bytes=settings.dns_cache_bytes,
            cache_max_ttl=settings.dns_cache_max_ttl,
        ),
        dns_timeout=settings.dns_timeout,
        dmarc_reject=settings.dmarc_policy == "reject",
        tempfail_on_dns_error=settings.tempfail_on_dns_error,
        max_header_bytes=settings.max_header_bytes,
        psl=psl,
        dkim_l_policy=settings.dkim_l_policy,
        headroom=guard_for(settings, postfix_queue=True),
    )
    return config, pool


def _register() -> None:
    """What Milter.runmilter does before it opens the socket, without serving yet."""
    libmilter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)  # the only actions we use
    libmilter.set_exception_policy(Milter.TEMPFAIL)  # a backstop; callbacks trap their own
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.register(
        MILTER_NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def _refuse_if_in_use(path: Path) -> None:
    """libmilter removes an existing socket file; never steal one a live daemon listens on."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise StartupError(f"{path} exists and is not a socket", EX_CONFIG)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
    except OSError:
        return  # stale: nobody listens
    finally:
        probe.close()
    raise StartupError(f"another milter is listening on {path}")


def _ids(settings: Settings) -> tuple[int | None, int | None]:
    """(uid to drop to, gid of the socket), from the settings; None where unset."""
    uid = gid = None
    if settings.milter_user and os.geteuid() == 0:
        try:
            uid = pwd.getpwnam(settings.milter_user).pw_uid
        except KeyError:
            raise StartupError(
                f"ORDERFLOW_MILTER_USER: no user {settings.milter_user}", EX_CONFIG
            ) from None
    if settings.milter_socket_group:
        try:
            gid = grp.getgrnam(settings.milter_socket_group).gr_gid
        except KeyError:
            raise StartupError(
                f"ORDERFLOW_MILTER_SOCKET_GROUP: no group {settings.milter_socket_group}",
                EX_CONFIG,
            ) from None
    return uid, gid


def open_socket(endpoint: Endpoint, uid: int | None, gid: int | None) -> None:
    """Create the listening socket.

    With ORDERFLOW_MILTER_SOCKET_GROUP (Postfix's group) the socket is mode 0660, owned by the
    milter user and that group: Postfix gets in, nobody else does. Without it, the mode comes
    from the process umask and the directory must keep others out (a run directory of mode
    0750 owned by the milter user and Postfix's group); a socket that every local user can
    reach is logged as a warning.
    """
    if endpoint.path is not None:
        parent = endpoint.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o750, parents=True)
            if uid is not None or gid is not None:
                os.chown(parent, -1 if uid is None else uid, -1 if gid is None else gid)
        _refuse_if_in_use(endpoint.path)
    libmilter.setconn(endpoint.spec)
    libmilter.settimeout(LIBMILTER_TIMEOUT)
    # With a group, never a moment with the socket open to anyone else.
    previous = os.umask(0o117) if gid is not None else None
    try:
        libmilter.opensocket(True)
    except libmilter.error as error:
        raise StartupError(f"cannot listen on {endpoint.spec}: {error}") from None
    finally:
        if previous is not None:
            os.umask(previous)
    if endpoint.path is None:
        return
    if gid is not None:
        try:
            os.chown(endpoint.path, -1 if uid is None else uid, gid)
            os.chmod(endpoint.path, SOCKET_MODE)
        except OSError as error:
            raise StartupError(
                f"cannot give {endpoint.path} group {gid} and mode 0660: {error.strerror} "
                "(the milter user must belong to ORDERFLOW_MILTER_SOCKET_GROUP, or start as root)"
            ) from None
    elif uid is not None:
        os.chown(endpoint.path, uid, -1)
    _warn_if_open(endpoint.path)


def _warn_if_open(path: Path) -> None:
    """A socket others may write to, in a directory others may enter, lets anyone probe slugs."""
    mode = path.stat().st_mode
    if not mode & 0o002:
        return
    for directory in path.parents:
        if not directory.stat().st_mode & 0o001:
            return  # some directory on the way keeps others out
    log_event(
        "milter.socket_open_to_all",
        logging.WARNING,
        socket=str(path),
        hint="set ORDERFLOW_MILTER_SOCKET_GROUP=postfix or keep the socket in a 0750 directory",
    )


def drop_privileges(uid: int | None) -> None:
    """Become the configured user (started as root with ORDERFLOW_MILTER_USER set)."""
    if uid is None:
        return
    entry = pwd.getpwuid(uid)
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise StartupError("failed to drop privileges")


class _Server:
    """libmilter's main loop in a thread; signals handled by the main thread."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.stop_requested_at = time.monotonic()
        self.thread = threading.Thread(target=self._main, name="libmilter", daemon=True)

    def _main(self) -> None:
        try:
            libmilter.main()
        except BaseException as error:  # reported by serve(); the thread must not vanish
            self.error = error

    def on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            self.stopping.set()
            self.stop_requested_at = time.monotonic()
            log_event("milter.stopping", signal=signal.Signals(signum).name)
            # libmilter notices the stop at its next 5-second poll; in-flight connections
            # end with it, and Postfix answers those per milter_default_action (tempfail).
            libmilter.stop()

    def on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        reopen_logs()
        log_event("milter.logs_reopened")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_hup)
        self.thread.start()
        while self.thread.is_alive():
            self.thread.join(0.5)


def _adopt_library_logs() -> None:
    """psycopg_pool reports a lost database on its own logger; send that through our JSON
    handler too, instead of as bare text on standard error."""
    handlers = list(logging.getLogger(LOGGER_NAME).handlers)
    for name in ("psycopg",):
        library = logging.getLogger(name)
        library.handlers[:] = handlers
        library.setLevel(logging.WARNING)
        library.propagate = False


def serve(settings: Settings) -> int:
    """Run the daemon until SIGTERM; returns the process exit status."""
    setup_logging(settings.log_level, settings.log_file, component="milter")
    _adopt_library_logs()
    try:
        endpoint = parse_endpoint(settings.milter_socket)
        uid, gid = _ids(settings)
        psl = load_public_suffix_list(settings)
    except StartupError as error:
        log_event("milter.start_failed", logging.ERROR, error=str(error))
        return error.status
    from orderflow_ingest.job_queue import make_redis
    from orderflow_ingest.milter.handler import OrderflowMilter

    config, pool = build_milter_config(settings, psl)
    metrics.configure(make_redis(settings), host=settings.metrics_host)
    Milter.factory = lambda: OrderflowMilter(config)
    try:
        _register()
        open_socket(endpoint, uid, gid)
        drop_privileges(uid)
    except StartupError as error:
        log_event("milter.start_failed", logging.ERROR, error=str(error))
        pool.close()
        return error.status
    socket_inode = endpoint.path.stat().st_ino if endpoint.path else None
    log_event(
        "milter.started",
        socket=endpoint.spec,
        authserv_id=config.authserv_id,
        dmarc_policy=settings.dmarc_policy,
        dkim_l_policy=settings.dkim_l_policy,
        public_suffix_list=settings.public_suffix_list,
        tempfail_on_dns_error=settings.tempfail_on_dns_error,
        dns_timeout=settings.dns_timeout,
        disk_paths=config.headroom.paths if config.headroom else None,
        disk_min_free_bytes=config.headroom.min_free if config.headroom else None,
        uid=os.getuid(),
    )
    server = _Server()
    server.run()
    status = EX_OK
    if server.error is not None and not server.stopping.is_set():
        log_event("milter.failed", logging.ERROR, error=repr(server.error))
        status = EX_SOFTWARE
    if endpoint.path is not None:
        with contextlib.suppress(OSError):
            if endpoint.path.stat().st_ino == socket_inode:
                endpoint.path.unlink()
    listener_seconds = time.monotonic() - server.stop_requested_at
    pool.close(timeout=2)
    metrics.shutdown()
    log_event(
        "milter.stopped",
        status=status,
        listener_seconds=round(listener_seconds, 3),
        total_seconds=round(time.monotonic() - server.stop_requested_at, 3),
    )
    return status
