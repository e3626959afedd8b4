"""The delivery service: a long-running local process that `deliver` hands each message to.

It holds the PostgreSQL pool, the S3 client and the Redis connection, so that Postfix's
per-message process stays a few milliseconds of CPU (the rt-mailgate / relay-ingress pattern).
It listens on a unix socket only. A delivery it cannot finish answers 75 and Postfix keeps the
message; if the service itself is down, the client answers 75 on its own.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

from orderflow_ingest import metrics, storage
from orderflow_ingest.db import make_pool
from orderflow_ingest.diskspace import HeadroomGuard, guard_for, is_out_of_space
from orderflow_ingest.job_queue import make_redis
from orderflow_ingest.logs import log_event, reopen_logs, setup_logging
from orderflow_ingest.outcomes import EX_CONFIG, Outcome
from orderflow_ingest.pipe.ingest import Backends, Envelope, deliver, spool
from orderflow_ingest.pipe.limits import checked_pipe_limits
from orderflow_ingest.pipe.profiling import PROFILE_ENV, Profiles
from orderflow_ingest.pipe.protocol import CHUNK, Decoder, TooLarge, WireError, format_reply
from orderflow_ingest.settings import Settings, SettingsError

SOCKET_MODE = 0o660
# The 75 answer when the spool is short of space (pipe(8) logs it with the deferral).
NO_SPACE_TEXT = "temporary failure (insufficient system storage), try again later"


class EmptyConnection(Exception):
    """A client connected and closed without a byte: a health probe, not a delivery."""


class DeadlinePassed(Exception):
    """The connection's one deadline passed before the message was complete."""


class Connection:
    """One client connection under one deadline for the whole exchange (not per read), so a
    client that trickles bytes cannot hold a worker slot past ORDERFLOW_DELIVER_TIMEOUT."""

    def __init__(self, conn: socket.socket, timeout: float, max_message: int):
        self.conn = conn
        self.deadline = time.monotonic() + timeout
        self.decoder = Decoder(max_message)
        self.error: Exception | None = None

    def _recv(self) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed
        self.conn.settimeout(remaining)
        try:
            return self.conn.recv(CHUNK)
        except TimeoutError:
            raise DeadlinePassed from None
        except OSError as error:  # the client went away (reset): not a whole message
            raise WireError(f"connection error: {error.strerror}") from None

    def read_envelope(self) -> tuple[Envelope, list[bytes]]:
        """The envelope, and whatever message pieces arrived with it."""
        pieces: list[bytes] = []
        while self.decoder.envelope is None:
            data = self._recv()
            if not data:
                if not self.decoder.started:
                    raise EmptyConnection
                self.decoder.finish()  # raises: closed before the envelope
            pieces = self.decoder.feed(data)
        wire = self.decoder.envelope
        assert wire is not None  # the loop above ends only once it is set
        envelope = Envelope(
            sender=wire.sender, recipient=wire.recipient, queue_id=wire.queue_id or None
        )
        return envelope, pieces

    def message_pieces(self, first: list[bytes]) -> Iterator[bytes]:
        """The message's bytes up to a verified trailer and the client's end of stream.

        A fault ends the iteration and is kept in `error` rather than raised into spool(),
        which then returns normally and its file is closed by the caller."""
        yield from first
        try:
            while True:
                data = self._recv()
                if not data:
                    self.decoder.finish()
                    return
                yield from self.decoder.feed(data)
        except (WireError, DeadlinePassed) as error:
            self.error = error


def handle(
    backends: Backends,
    conn: socket.socket,
    max_message: int,
    headroom: HeadroomGuard | None = None,
) -> None:
    """One delivery; whatever happens, the client gets one reply line if it is still there.

    Nothing is handed to deliver() (no row, no S3 object) unless the whole message arrived,
    as the trailer proves; anything less answers 75 and Postfix retries the whole message.
    A spool under ORDERFLOW_MIN_FREE_MB (`headroom`), or a spool write that finds the disk
    full, also answers 75 before anything is stored: the retry spools the message whole."""
    started = time.monotonic()
    outcome = Outcome.INTERNAL_ERROR
    label: str | None = None
    text: str | None = None
    connection = Connection(conn, backends.settings.deliver_timeout, max_message)
    try:
        try:
            envelope, first = connection.read_envelope()
        except EmptyConnection:
            log_event("delivery.probe", logging.DEBUG)
            with suppress(OSError):
                conn.close()
            return
        short = headroom.short() if headroom is not None else None
        if short is not None:
            raise OSError(errno.ENOSPC, f"{short.free_bytes} bytes free, under the threshold")
        message = spool(connection.message_pieces(first), backends.settings)
        try:
            if connection.error is not None:
                raise connection.error
            outcome = deliver(backends, envelope, message)
        finally:
            message.file.close()
    except (WireError, DeadlinePassed) as error:
        outcome, label = _refused(error, connection)
    except OSError as error:
        if not is_out_of_space(error):
            log_event("delivery.internal_error", logging.ERROR, exc_info=True)
        else:
            outcome, label, text = _out_of_space(error, connection)
    except Exception:
        log_event("delivery.internal_error", logging.ERROR, exc_info=True)
    metrics.count("orderflow_deliveries_total", outcome=label or outcome.name.lower())
    metrics.observe("orderflow_delivery_seconds", time.monotonic() - started)
    with suppress(OSError):
        conn.sendall(format_reply(outcome.exit_status, text or outcome.text))
    with suppress(OSError):
        conn.close()


def _out_of_space(error: OSError, connection: Connection) -> tuple[Outcome, str, str]:
    """The spool is short of space (under the threshold, or a write hit ENOSPC): nothing was
    stored. Read the rest of the message into nothing, so the client gets our answer (75) and
    not a broken pipe, and let Postfix retry the whole message later."""
    for _piece in connection.message_pieces([]):
        pass  # discarded; the connection's deadline still bounds this
    envelope = connection.decoder.envelope
    log_event(
        "delivery.deferred_no_space",
        logging.WARNING,
        error=error.strerror,
        received_bytes=connection.decoder.total,
        queue_id=envelope.queue_id if envelope else None,
        recipient=envelope.recipient if envelope else None,
    )
    return Outcome.BACKEND_UNAVAILABLE, "insufficient_storage", NO_SPACE_TEXT


def _refused(error: Exception, connection: Connection) -> tuple[Outcome, str]:
    """Log why a connection did not carry a whole message; its outcome and metric label."""
    if isinstance(error, DeadlinePassed):
        outcome, label, reason = Outcome.TIMED_OUT, "timed_out", "deadline passed"
    elif isinstance(error, TooLarge):
        outcome, label, reason = Outcome.INTERNAL_ERROR, "too_large", str(error)
    else:
        outcome, label, reason = Outcome.INTERNAL_ERROR, "incomplete", str(error)
    envelope = connection.decoder.envelope  # set even when the fault came in the same read
    log_event(
        "delivery.incomplete",
        logging.WARNING,
        reason=reason,
        received_bytes=connection.decoder.total,
        queue_id=envelope.queue_id if envelope else None,
        recipient=envelope.recipient if envelope else None,
    )
    return outcome, label


def bind_socket(settings: Settings) -> socket.socket:
    """Listen on the unix socket; only its owner and group (the pipe user) may connect."""
    path = settings.deliver_socket
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    if settings.deliver_socket_group:
        os.chown(path, -1, grp.getgrnam(settings.deliver_socket_group).gr_gid)
    os.chmod(path, SOCKET_MODE)
    listener.listen(256)
    return listener


def serve(settings: Settings) -> int:
    """Start-up order: settings (validated by the caller), Postfix's limits, logs, clients,
    socket, serve. A deliver timeout that does not end before pipe(8)'s time limit refuses to
    start (exit 78, as for any other configuration error)."""
    try:
        limits = checked_pipe_limits(settings)
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(settings.log_level, settings.log_file, component="deliver-service")
    os.makedirs(settings.spool_dir, mode=0o700, exist_ok=True)
    workers = settings.deliver_workers
    pool = make_pool(settings, max_size=workers, name="deliver")
    pool.open(wait=False)
    redis_client = make_redis(settings)
    backends = Backends(
        settings=settings,
        pool=pool,
        s3=storage.make_client(settings, max_pool_connections=workers),
        s3_put=storage.SmallPut(settings, max_pool_connections=workers),
        redis=redis_client,
    )
    metrics.configure(redis_client, host=settings.metrics_host)
    listener = bind_socket(settings)
    headroom = guard_for(settings, postfix_queue=False)
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            listener.close()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, lambda signum, frame: reopen_logs())
    log_event(
        "service.started",
        socket=settings.deliver_socket,
        workers=workers,
        max_message=limits.max_message,
        pipe_time_limit=limits.time_limit,
        spool_min_free_bytes=headroom.min_free,
    )
    slots = threading.BoundedSemaphore(workers)
    profile_path = os.environ.get(PROFILE_ENV)
    profiles = Profiles(profile_path) if profile_path else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as executor:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if stopping.is_set():
                    break
                raise
            slots.acquire()  # a full house waits here; clients queue in the listen backlog

            def run(conn: socket.socket = conn) -> None:
                try:
                    if profiles is not None:
                        profiles.run(lambda: handle(backends, conn, limits.max_message, headroom))
                    else:
                        handle(backends, conn, limits.max_message, headroom)
                finally:
                    slots.release()

            executor.submit(run)
    with suppress(FileNotFoundError):
        os.unlink(settings.deliver_socket)
    if profiles is not None:
        profiles.dump()
    pool.close()
    metrics.shutdown()
    log_event("service.stopped")
    return 0
