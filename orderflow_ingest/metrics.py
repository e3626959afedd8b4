"""Recording metrics from processes that live for one message or one job.

prometheus_client's multiprocess mode leaves a file per pid forever, so instead every process
adds its counts to a small in-memory buffer that is flushed to one Redis hash (by a background
thread in long-running processes, explicitly at the end of an RQ job). The exporter
(`orderflow-ingest exporter`) is the only reader. Recording never raises and never waits on
Redis: metrics must not be able to fail or slow a delivery.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

# One hash per host: processes add to their own host's hash and each host's exporter reads only
# that one, so Prometheus' sum over instances is the cluster total (one shared hash made every
# exporter report the whole cluster as its own, multiplying sums by the number of hosts).
REDIS_KEY_PREFIX = "orderflow:metrics:"

# Histograms: name -> bucket upper bounds. The one place their buckets are defined.
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "smtp_attachment_extraction_duration_ms": (
        10,
        25,
        50,
        100,
        250,
        500,
        1000,
        2500,
        5000,
        10000,
        30000,
        60000,
    ),
    "orderflow_s3_put_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    "orderflow_db_seconds": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    "orderflow_delivery_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    # One webhook attempt, connect to response (bounded by ORDERFLOW_WEBHOOK_TIMEOUT).
    "orderflow_webhook_attempt_seconds": (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
}

_lock = threading.Lock()
_pending: dict[str, float] = defaultdict(float)
_redis: Any = None
_key = ""
_flusher: threading.Thread | None = None
_stop = threading.Event()
MAX_PENDING_FIELDS = 10_000


def field_name(name: str, labels: dict[str, Any]) -> str:
    """The hash field of one series: JSON [name, {label: value}] with sorted labels."""
    return _field_name(name, tuple(sorted((key, str(value)) for key, value in labels.items())))


@lru_cache(maxsize=4096)
def _field_name(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    # Series repeat endlessly (the milter counts every decision): encode each one once.
    return json.dumps([name, dict(labels)], separators=(",", ":"))


def parse_field(field: str | bytes) -> tuple[str, dict[str, str]]:
    name, labels = json.loads(field)
    return name, labels


def _add(*increments: tuple[str, float]) -> None:
    # One lock for all of a histogram's series, so a flush never splits an observation
    # (a scrape must never see bucket{le="+Inf"} differ from _count).
    with _lock:
        for field, amount in increments:
            if field in _pending or len(_pending) < MAX_PENDING_FIELDS:
                _pending[field] += amount


def count(name: str, amount: float = 1, **labels: Any) -> None:
    """Add to a counter (names end in _total)."""
    _add((field_name(name, labels), amount))


def observe(name: str, value: float, **labels: Any) -> None:
    """Record one observation of a histogram declared in HISTOGRAMS."""
    buckets, inf, total, count_field = _histogram_fields(
        name, tuple(sorted((key, str(value)) for key, value in labels.items()))
    )
    increments = [(field, 1.0) for bound, field in buckets if value <= bound]
    increments += [(inf, 1.0), (total, value), (count_field, 1.0)]
    _add(*increments)


@lru_cache(maxsize=1024)
def _histogram_fields(
    name: str, labels: tuple[tuple[str, str], ...]
) -> tuple[tuple[tuple[float, str], ...], str, str, str]:
    """Every field one series of a histogram writes, built once per series (the delivery
    path observes several histograms per message)."""
    plain = dict(labels)
    bucket = name + "_bucket"
    return (
        tuple((bound, field_name(bucket, {**plain, "le": bound})) for bound in HISTOGRAMS[name]),
        field_name(bucket, {**plain, "le": "+Inf"}),
        field_name(name + "_sum", plain),
        field_name(name + "_count", plain),
    )


@contextmanager
def timed(name: str, **labels: Any) -> Iterator[None]:
    """Observe the seconds the block took (also when it raises: slow failures matter most)."""
    started = time.monotonic()
    try:
        yield
    finally:
        observe(name, time.monotonic() - started, **labels)


def redis_key(host: str = "") -> str:
    """The hash of one host's series (`host` empty: this machine's host name)."""
    return REDIS_KEY_PREFIX + (host or socket.gethostname())


def configure(redis_client: Any, flush_interval: float | None = 1.0, host: str = "") -> None:
    """Send buffered metrics to this host's hash in this Redis; with an interval, from a
    daemon thread. `host` is ORDERFLOW_METRICS_HOST (empty: the system host name)."""
    global _redis, _flusher, _key
    _redis = redis_client
    _key = redis_key(host)
    if flush_interval and _flusher is None:
        _stop.clear()
        _flusher = threading.Thread(
            target=_flush_loop, args=(flush_interval,), name="metrics-flush", daemon=True
        )
        _flusher.start()


def _flush_loop(interval: float) -> None:
    while not _stop.wait(interval):
        flush()


def flush() -> bool:
    """Write the buffer to Redis; on failure keep it for the next try. Never raises."""
    if _redis is None:
        return False
    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return True
    try:
        pipe = _redis.pipeline(transaction=False)
        for field, amount in batch.items():
            pipe.hincrbyfloat(_key, field, amount)
        pipe.execute()
        return True
    except Exception:
        _add(*batch.items())
        return False


def shutdown() -> None:
    """Stop the flusher and flush what is left (called on clean exit)."""
    global _flusher
    _stop.set()
    if _flusher is not None:
        _flusher.join(timeout=2)
        _flusher = None
    flush()


def read_all(redis_client: Any, host: str = "") -> dict[str, float]:
    """Every series recorded on one host (the exporter's view of its own host)."""
    raw = redis_client.hgetall(redis_key(host))
    return {
        (key.decode() if isinstance(key, bytes) else key): float(value)
        for key, value in raw.items()
    }
