"""The delivery service: a long-running local process that `deliver` hands each message to.

It holds the PostgreSQL pool, the S3 client and the Redis connection, so that Postfix's
per-message process stays a few milliseconds of CPU (the rt-mailgate / relay-ingress pattern).
It listens on a unix socket only. A delivery it cannot finish answers 75 and Postfix keeps the
message; if the service itself is down, the client answers 75 on its own.
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

from orderflow_ingest import metrics, storage
from orderflow_ingest.db import make_pool
from orderflow_ingest.logs import log_event, reopen_logs, setup_logging
from orderflow_ingest.outcomes import Outcome
from orderflow_ingest.pipe.ingest import Backends, Envelope, deliver, spool
from orderflow_ingest.pipe.protocol import CHUNK, format_reply, parse_envelope
from orderflow_ingest.queue import make_redis
from orderflow_ingest.settings import Settings

SOCKET_MODE = 0o660


class EmptyConnection(Exception):
    """A client connected and closed without a byte: a health probe, not a delivery."""


def read_envelope(conn: socket.socket) -> tuple[Envelope, bytes]:
    """The envelope, and whatever message bytes arrived with it."""
    buffer = b""
    while True:
        parsed = parse_envelope(buffer)
        if parsed is not None:
            (sender, recipient, queue_id), rest = parsed
            return Envelope(sender=sender, recipient=recipient, queue_id=queue_id or None), rest
        data = conn.recv(CHUNK)
        if not data:
            if not buffer:
                raise EmptyConnection
            raise ValueError("connection closed before the envelope")
        buffer += data


def message_chunks(conn: socket.socket, first: bytes) -> Iterator[bytes]:
    if first:
        yield first
    while True:
        data = conn.recv(CHUNK)
        if not data:
            return
        yield data


def handle(backends: Backends, conn: socket.socket) -> None:
    """One delivery; whatever happens, the client gets one reply line if it is still there."""
    started = time.monotonic()
    outcome = Outcome.INTERNAL_ERROR
    try:
        conn.settimeout(backends.settings.deliver_timeout)
        try:
            envelope, first = read_envelope(conn)
        except EmptyConnection:
            log_event("delivery.probe", logging.DEBUG)
            with suppress(OSError):
                conn.close()
            return
        message = spool(message_chunks(conn, first), backends.settings)
        try:
            outcome = deliver(backends, envelope, message)
        finally:
            message.file.close()
    except Exception:
        log_event("delivery.internal_error", logging.ERROR, exc_info=True)
    metrics.count("orderflow_deliveries_total", outcome=outcome.name.lower())
    metrics.observe("orderflow_delivery_seconds", time.monotonic() - started)
    with suppress(OSError):
        conn.sendall(format_reply(outcome.exit_status, outcome.text))
    with suppress(OSError):
        conn.close()


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
    """Start-up order: settings (validated by the caller), logs, clients, socket, serve."""
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
        redis=redis_client,
    )
    metrics.configure(redis_client)
    listener = bind_socket(settings)
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
    log_event("service.started", socket=settings.deliver_socket, workers=workers)
    slots = threading.BoundedSemaphore(workers)
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
                    handle(backends, conn)
                finally:
                    slots.release()

            executor.submit(run)
    with suppress(FileNotFoundError):
        os.unlink(settings.deliver_socket)
    pool.close()
    metrics.shutdown()
    log_event("service.stopped")
    return 0
