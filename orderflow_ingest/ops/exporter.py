"""`orderflow-ingest exporter`: the one long-lived process Prometheus scrapes.

RQ forks a process per job and several services record too, so they all add to one Redis
hash (metrics.py) and this process serves it, with gauges read at scrape time
(collector.py). It listens on loopback only: settings refuse any other address, and this
module checks again before and after binding, so a settings bug or an odd resolver can never
put the metrics (org ids, queue sizes) on a public interface.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from orderflow_ingest.diskspace import min_free_bytes
from orderflow_ingest.logs import log_event, setup_logging
from orderflow_ingest.ops.collector import (
    SOURCE_TIMEOUT,
    OrderflowCollector,
    Sources,
    TimedCache,
    postconf_value,
    postfix_queue_directory,
)
from orderflow_ingest.outcomes import EX_CONFIG
from orderflow_ingest.settings import Settings

# queue_directory of Postfix changes only with a reconfiguration: look it up rarely.
QUEUE_DIRECTORY_CACHE_SECONDS = 300.0


class NotLoopback(ValueError):
    """The listen address is not (or does not resolve only to) a loopback address."""


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def loopback_bind(listen: str) -> tuple[str, int]:
    """(numeric loopback address, port) to bind for `host:port` / `[v6]:port`; else NotLoopback.

    A name must resolve to loopback addresses only; an empty host (all interfaces) is refused.
    """
    host, sep, port_text = listen.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise NotLoopback(f"{listen!r}: expected 127.0.0.1:PORT or [::1]:PORT")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise NotLoopback(f"{listen!r}: cannot resolve {host}: {error}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(_is_loopback(address) for address in addresses):
        raise NotLoopback(
            f"{listen!r} is not loopback ({', '.join(sorted(set(addresses)))}): the exporter"
            " only listens on 127.0.0.1 or ::1; put a TLS proxy in front to scrape remotely"
        )
    return addresses[0], port


class LazyDatabase:
    """One connection kept between scrapes; dropped on error so the next scrape reconnects."""

    def __init__(self, url: str):
        self._url = url
        self._conn: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        from orderflow_ingest.db import connect

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._url, timeout=SOURCE_TIMEOUT)
            conn = self._conn
            try:
                yield conn
                conn.rollback()  # never leave the session idle in a transaction
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as error:  # closing a broken connection may fail; it is gone
                log_event("exporter.close_failed", logging.DEBUG, error=str(error))
            self._conn = None


def _s3_probe(settings: Settings) -> Callable[[], None]:
    """HEAD the bucket with a client made on first use (boto3 is slow to import)."""
    clients: list[Any] = []

    def probe() -> None:
        if not clients:
            from orderflow_ingest import storage

            clients.append(storage.make_client(settings))
        clients[0].head_bucket(Bucket=settings.s3_bucket)

    return probe


def make_collector(settings: Settings, postfix_cache_seconds: float | None = None) -> Any:
    from redis import Redis

    redis_client = Redis.from_url(
        settings.redis_url,
        socket_timeout=SOURCE_TIMEOUT,
        socket_connect_timeout=SOURCE_TIMEOUT,
    )
    config_dir = settings.postfix_config_dir
    has_postfix = Path(config_dir, "main.cf").is_file()
    disk_paths = {"spool": lambda: str(settings.spool_dir)}
    if has_postfix:
        queue_dir = TimedCache(
            lambda: postfix_queue_directory(config_dir), QUEUE_DIRECTORY_CACHE_SECONDS
        )
        disk_paths["postfix_queue"] = queue_dir.get
        certificate: Callable[[], str] | None = TimedCache(
            lambda: postconf_value(config_dir, "smtpd_tls_cert_file"), QUEUE_DIRECTORY_CACHE_SECONDS
        ).get
    else:
        certificate = None
        log_event("exporter.no_postfix", logging.WARNING, postfix_config_dir=config_dir)
    sources = Sources(
        redis=lambda: redis_client,
        database=LazyDatabase(settings.database_url),
        rq_queues=(settings.attachment_queue, settings.extraction_queue),
        postfix_config_dir=config_dir if has_postfix else None,
        disk_paths=disk_paths,
        metrics_host=settings.metrics_host,
        s3_probe=_s3_probe(settings),
        certificate=certificate,
        disk_min_free=min_free_bytes(settings.min_free_mb),
        listeners=(
            {"milter": settings.milter_socket, "deliver_service": settings.deliver_socket}
            if has_postfix
            else {}
        ),
    )
    options = (
        {} if postfix_cache_seconds is None else {"postfix_cache_seconds": postfix_cache_seconds}
    )
    return OrderflowCollector(sources, **options)


def start(settings: Settings, collector: Any = None) -> tuple[Any, threading.Thread]:
    """Bind and serve in a background thread; returns (server, thread)."""
    host, port = loopback_bind(settings.metrics_listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or make_collector(settings))
    ProcessCollector(registry=registry)
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = str(server.server_address[0])
    if not _is_loopback(bound):  # defence in depth: check what the kernel actually bound
        server.shutdown()
        server.server_close()
        raise NotLoopback(f"bound {bound}, which is not loopback")
    return server, thread


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status (EX_CONFIG for a non-loopback address)."""
    setup_logging(settings.log_level, settings.log_file, component="exporter")
    try:
        server, _thread = start(settings)
    except NotLoopback as error:
        log_event("exporter.refused", logging.ERROR, error=str(error))
        return EX_CONFIG
    log_event("exporter.started", listen=settings.metrics_listen)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    while not stopping.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    log_event("exporter.stopped")
    return 0
