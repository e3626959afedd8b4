"""What one scrape of the exporter shows, built fresh from the sources at scrape time.

Counters and histograms come from the Redis hash the short-lived processes add to
(metrics.py); gauges are read when Prometheus asks: Postfix's queue (`postqueue -j`, cached
briefly because it walks the queue directory), RQ's queues, the ingest lag from PostgreSQL
and free disk. A source that fails shows as `orderflow_exporter_backend_up{backend} 0` and
its series are left out: the scrape itself never fails, so Prometheus can tell "Redis is
down" from "the exporter is down".
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orderflow_ingest import metrics
from orderflow_ingest.logs import log_event
from orderflow_ingest.ops import postfix_queue, queries
from orderflow_ingest.ops.probes import unix_socket_listening

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# postqueue walks the whole queue directory: at most once per this many seconds, however
# many Prometheus servers scrape (an HA pair scrapes twice per interval).
POSTFIX_CACHE_SECONDS = 10.0
# The exporter's own backend calls must end well inside Prometheus' 10 s scrape timeout.
SOURCE_TIMEOUT = 3.0

# Help text of the series recorded elsewhere. A name not listed still exports, with a
# generic help line, so a new counter never needs an exporter change.
HELP: dict[str, str] = {
    "smtp_emails_received_total": "Messages accepted into the store, by org and status.",
    "smtp_processing_errors_total": "Processing errors by org and error type.",
    "smtp_attachment_extraction_duration_ms": "Time one attachment-extraction job took (ms).",
    "orderflow_deliveries_total": "pipe(8) deliveries by outcome (delivered, duplicate, ...).",
    "orderflow_duplicates_total": "Deliveries of a message already received, by org.",
    "orderflow_message_conflicts_total": (
        "Messages kept as their own row because an earlier one of the org has the same"
        " Message-ID but other content, by org."
    ),
    "orderflow_milter_decisions_total": "Milter decisions (accept/reject/tempfail) by reason.",
    "orderflow_milter_verdicts_total": "SPF, DKIM and DMARC results seen by the milter.",
    "orderflow_delivery_seconds": "Time the delivery service took for one delivery.",
    "orderflow_s3_put_seconds": "Time one S3 put took.",
    "orderflow_db_seconds": "Time one database step (statement and commit) took, by operation.",
    "orderflow_documents_extracted_total": "Documents stored and handed to extraction.",
    "orderflow_sweep_total": "Stuck messages `sweep` acted on, by action.",
    "orderflow_reprocess_total": "Messages `reprocess` reopened and re-enqueued.",
    "orderflow_webhook_deliveries_total": (
        "Webhook attempts by outcome (delivered, retrying, failed, gone, stale)."
    ),
    "orderflow_webhook_attempt_seconds": "Time one webhook attempt took, by result.",
}
GENERIC_HELP = "Recorded by orderflow-ingest (see orderflow_ingest/metrics.py)."


def _help(name: str) -> str:
    return HELP.get(name) or HELP.get(name + "_total") or GENERIC_HELP


@dataclass
class _Series:
    """The samples of one recorded metric name, keyed by their label values."""

    label_names: set[str] = field(default_factory=set)
    values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


@dataclass
class _Histogram:
    label_names: set[str] = field(default_factory=set)
    buckets: dict[tuple[tuple[str, str], ...], dict[str, float]] = field(default_factory=dict)
    sums: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)
    counts: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _histogram_part(name: str, histograms: Iterable[str]) -> tuple[str, str] | None:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)], suffix
    return None


def _le_key(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


def families_from_hash(
    values: dict[str, float], histograms: dict[str, tuple[float, ...]] | None = None
) -> list[Metric]:
    """Counters, histograms (and any gauge) from the metrics hash, sorted by name.

    Series of one name may carry different label names (a label added later); missing
    labels are exported empty. Fields that are not valid metric names are skipped, never
    allowed to break the scrape.
    """
    histograms = metrics.HISTOGRAMS if histograms is None else histograms
    plain: dict[str, _Series] = {}
    hists: dict[str, _Histogram] = {}
    for field_name, value in values.items():
        try:
            name, labels = metrics.parse_field(field_name)
            labels = {str(key): str(val) for key, val in dict(labels).items()}
        except (ValueError, TypeError):
            continue
        if not METRIC_NAME.match(name) or not all(LABEL_NAME.match(key) for key in labels):
            continue
        part = _histogram_part(name, histograms)
        if part is None:
            series = plain.setdefault(name, _Series())
            series.label_names.update(labels)
            series.values[tuple(sorted(labels.items()))] = value
            continue
        base, suffix = part
        hist = hists.setdefault(base, _Histogram())
        le = labels.pop("le", None)
        hist.label_names.update(labels)
        key = tuple(sorted(labels.items()))
        if suffix == "_bucket" and le is not None:
            hist.buckets.setdefault(key, {})[le] = value
        elif suffix == "_sum":
            hist.sums[key] = value
        elif suffix == "_count":
            hist.counts[key] = value
    families: list[Metric] = []
    for name in sorted(plain):
        families.append(_plain_family(name, plain[name]))
    for name in sorted(hists):
        families.append(_histogram_family(name, hists[name]))
    return sorted(families, key=lambda family: family.name)


def _plain_family(name: str, series: _Series) -> Metric:
    label_names = sorted(series.label_names)
    family: Metric
    if name.endswith("_total"):
        family = CounterMetricFamily(name, _help(name), labels=label_names)
    else:
        family = GaugeMetricFamily(name, _help(name), labels=label_names)
    for key, value in sorted(series.values.items()):
        labels = dict(key)
        family.add_metric([labels.get(label, "") for label in label_names], value)
    return family


def _histogram_family(name: str, hist: _Histogram) -> Metric:
    label_names = sorted(hist.label_names)
    family = HistogramMetricFamily(name, _help(name), labels=label_names)
    keys = set(hist.buckets) | set(hist.sums) | set(hist.counts)
    for key in sorted(keys):
        labels = dict(key)
        recorded = hist.buckets.get(key, {})
        total = hist.counts.get(key, recorded.get("+Inf", 0.0))
        buckets: list[tuple[str, float]] = []
        running = 0.0
        for le in sorted((le for le in recorded if le != "+Inf"), key=_le_key):
            # Buckets are recorded cumulatively; max() keeps them monotonic even if a
            # flush was lost half-way, which Prometheus would otherwise reject.
            running = max(running, recorded[le])
            buckets.append((floatToGoString(_le_key(le)), running))
        buckets.append(("+Inf", max(running, total)))
        family.add_metric(
            [labels.get(label, "") for label in label_names],
            buckets,
            hist.sums.get(key, 0.0),
        )
    return family


# --- Scrape-time sources ---------------------------------------------------------------


@dataclass(frozen=True)
class RQQueueState:
    queue: str
    queued: int
    started: int
    scheduled: int
    deferred: int
    failed: int
    workers: int


def rq_queue_states(redis: Any, queue_names: Iterable[str]) -> list[RQQueueState]:
    from rq import Queue, Worker

    states = []
    for name in queue_names:
        queue = Queue(name, connection=redis)
        states.append(
            RQQueueState(
                queue=name,
                queued=queue.count,
                started=queue.started_job_registry.count,
                scheduled=queue.scheduled_job_registry.count,
                deferred=queue.deferred_job_registry.count,
                failed=queue.failed_job_registry.count,
                workers=Worker.count(connection=redis, queue=queue),
            )
        )
    return states


def rq_families(states: list[RQQueueState]) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "orderflow_rq_jobs",
        "RQ jobs by queue and state (queued = queue depth; failed = retries exhausted).",
        labels=["queue", "state"],
    )
    workers = GaugeMetricFamily(
        "orderflow_rq_workers", "RQ workers listening on each queue.", labels=["queue"]
    )
    for state in states:
        for name in ("queued", "started", "scheduled", "deferred", "failed"):
            jobs.add_metric([state.queue, name], getattr(state, name))
        workers.add_metric([state.queue], state.workers)
    return [jobs, workers]


def ingest_families(rows: list[dict[str, Any]]) -> list[Metric]:
    """Messages not yet PARSED or FAILED, and the age of the oldest (the ingest lag)."""
    pending = GaugeMetricFamily(
        "orderflow_messages_pending",
        "Messages whose extraction has not finished, by status (RECEIVED or STORED).",
        labels=["status"],
    )
    by_status = {row["status"]: row for row in rows}
    for status in queries.IN_FLIGHT:
        pending.add_metric([status], float(by_status.get(status, {}).get("messages", 0)))
    lag = max((float(row["oldest_seconds"]) for row in rows), default=0.0)
    return [
        pending,
        GaugeMetricFamily(
            "orderflow_ingest_lag_seconds",
            "Age of the oldest message not yet PARSED or FAILED (0 when none is waiting).",
            value=lag,
        ),
    ]


def postfix_families(summary: postfix_queue.QueueSummary) -> list[Metric]:
    messages = GaugeMetricFamily(
        "orderflow_postfix_queue_messages",
        "Messages in each Postfix queue (postqueue -j).",
        labels=["queue"],
    )
    recipients = GaugeMetricFamily(
        "orderflow_postfix_queue_recipients",
        "Recipients of the messages in each Postfix queue.",
        labels=["queue"],
    )
    size = GaugeMetricFamily(
        "orderflow_postfix_queue_size_bytes", "Bytes in each Postfix queue.", labels=["queue"]
    )
    oldest = GaugeMetricFamily(
        "orderflow_postfix_queue_oldest_seconds",
        "Age of the oldest message in each Postfix queue (0 when empty).",
        labels=["queue"],
    )
    for name in summary.messages:
        messages.add_metric([name], summary.messages[name])
        recipients.add_metric([name], summary.recipients[name])
        size.add_metric([name], summary.size_bytes[name])
        oldest.add_metric([name], summary.oldest_age_seconds[name] or 0.0)
    return [messages, recipients, size, oldest]


@dataclass(frozen=True)
class DiskUsage:
    purpose: str
    path: str
    free_bytes: int
    size_bytes: int


def disk_usage(purpose: str, path: str) -> DiskUsage:
    stat = os.statvfs(path)
    # f_bavail: what an unprivileged process may still write (Postfix runs unprivileged).
    return DiskUsage(purpose, path, stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)


def disk_families(usages: list[DiskUsage], min_free: int = 0) -> list[Metric]:
    """Free and total bytes; with a threshold (ORDERFLOW_MIN_FREE_MB), that too, so an alert
    can compare the two: under it the milter answers 452 at MAIL FROM (issue 13)."""
    free = GaugeMetricFamily(
        "orderflow_disk_free_bytes",
        "Bytes an unprivileged process may still write (spool and Postfix queue).",
        labels=["purpose", "path"],
    )
    size = GaugeMetricFamily(
        "orderflow_disk_size_bytes", "Size of the file system.", labels=["purpose", "path"]
    )
    threshold = GaugeMetricFamily(
        "orderflow_disk_min_free_bytes",
        "ORDERFLOW_MIN_FREE_MB in bytes: under it the milter answers 452 and deliver defers.",
        labels=["purpose", "path"],
    )
    for usage in usages:
        free.add_metric([usage.purpose, usage.path], usage.free_bytes)
        size.add_metric([usage.purpose, usage.path], usage.size_bytes)
        threshold.add_metric([usage.purpose, usage.path], min_free)
    return [free, size, threshold] if min_free > 0 else [free, size]


class TimedCache:
    """One value recomputed at most every `ttl` seconds; a failure is cached too, so a
    broken backend is not hammered by every scrape."""

    def __init__(self, compute: Callable[[], Any], ttl: float):
        self._compute = compute
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = -math.inf
        self._value: Any = None
        self._error: Exception | None = None

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    self._value, self._error = self._compute(), None
                except Exception as error:
                    self._value, self._error = None, error
                self._at = time.monotonic()
            if self._error is not None:
                raise self._error
            return self._value


def postconf_value(config_dir: str, name: str) -> str:
    """One main.cf value of the Postfix instance, as Postfix itself resolves it."""
    result = subprocess.run(
        ["postconf", "-c", config_dir, "-h", name],
        capture_output=True,
        text=True,
        timeout=SOURCE_TIMEOUT,
        check=True,
    )
    return result.stdout.strip()


def postfix_queue_directory(config_dir: str) -> str:
    """queue_directory of the Postfix instance (where its queue's disk space goes)."""
    return postconf_value(config_dir, "queue_directory")


def certificate_families(path: str, now: float | None = None) -> list[Metric]:
    """Seconds until the smtpd certificate expires (negative once it has)."""
    from orderflow_ingest.ops.mx_checks import certificate_facts

    facts = certificate_facts(Path(path))
    expiry = GaugeMetricFamily(
        "orderflow_tls_certificate_expiry_seconds",
        "Seconds until Postfix's smtpd certificate (smtpd_tls_cert_file) expires.",
        labels=["path"],
    )
    now = time.time() if now is None else now
    expiry.add_metric([path], facts.not_after.timestamp() - now)
    return [expiry]


@dataclass
class Sources:
    """How the collector reaches each backend; tests pass their own."""

    redis: Callable[[], Any]
    # A context manager giving a connection; it drops a broken one so the next scrape
    # reconnects (PostgreSQL restarted, failover).
    database: Callable[[], AbstractContextManager[Any]]
    rq_queues: tuple[str, ...]
    postfix_config_dir: str | None
    disk_paths: dict[str, Callable[[], str]]
    # ORDERFLOW_METRICS_HOST: whose counters this exporter serves (empty: this host's name).
    metrics_host: str = ""
    # Reaches the bucket (a HEAD request); None on a host that should not check it.
    s3_probe: Callable[[], None] | None = None
    # Unix sockets that must have a listener on this host: the milter and the delivery
    # service (read from /proc/net/unix: connecting would count as a delivery or a milter
    # session, and the exporter's user may not be allowed to connect to the milter).
    listeners: dict[str, str] = field(default_factory=dict)
    # The smtpd certificate's path (postconf smtpd_tls_cert_file); None: no Postfix here.
    certificate: Callable[[], str] | None = None
    # ORDERFLOW_MIN_FREE_MB in bytes (0: no threshold exported).
    disk_min_free: int = 0


class OrderflowCollector(Collector):
    """Builds every family at scrape time; one scrape at a time (scrapes share clients)."""

    def __init__(self, sources: Sources, postfix_cache_seconds: float = POSTFIX_CACHE_SECONDS):
        self._sources = sources
        self._lock = threading.Lock()
        self._postfix = TimedCache(self._postfix_summary, postfix_cache_seconds)
        self._logged_down: set[str] = set()
        self._durations: dict[str, float] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not touch the backends

    def _postfix_summary(self) -> postfix_queue.QueueSummary:
        assert self._sources.postfix_config_dir is not None
        return postfix_queue.queue_summary(self._sources.postfix_config_dir, SOURCE_TIMEOUT * 2)

    def _run(
        self, backend: str, build: Callable[[], list[Metric]], up: dict[str, float]
    ) -> list[Metric]:
        started = time.monotonic()
        try:
            families = build()
        except Exception as error:
            up[backend] = 0.0
            if backend not in self._logged_down:  # once per outage, not once per scrape
                self._logged_down.add(backend)
                log_event(
                    "exporter.backend_down",
                    logging.WARNING,
                    backend=backend,
                    error_type=type(error).__name__,
                    error=str(error)[:300],
                )
            return []
        if backend in self._logged_down:
            self._logged_down.discard(backend)
            log_event("exporter.backend_up", backend=backend)
        up.setdefault(backend, 1.0)
        self._durations[backend] = self._durations.get(backend, 0.0) + (time.monotonic() - started)
        return families

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> list[Metric]:
        up: dict[str, float] = {}
        self._durations = {}
        sources = self._sources
        families: list[Metric] = []
        families += self._run(
            "redis",
            lambda: families_from_hash(metrics.read_all(sources.redis(), sources.metrics_host)),
            up,
        )
        families += self._run(
            "redis", lambda: rq_families(rq_queue_states(sources.redis(), sources.rq_queues)), up
        )
        families += self._run("postgres", self._ingest, up)
        families += self._run("postgres", self._webhooks, up)
        families += self._run("postgres", self._domains, up)
        if sources.postfix_config_dir:
            families += self._run("postfix", lambda: postfix_families(self._postfix.get()), up)
        families += self._run("disk", self._disks, up)
        if sources.s3_probe is not None:
            families += self._run("s3", self._s3, up)
        if sources.certificate is not None:
            certificate = sources.certificate
            families += self._run("tls", lambda: certificate_families(certificate()), up)
        for backend, path in sources.listeners.items():
            families += self._run(backend, lambda path=path: self._listening(path), up)  # type: ignore[misc]
        backend_up = GaugeMetricFamily(
            "orderflow_exporter_backend_up",
            "1 when the exporter could read this backend in this scrape, else 0.",
            labels=["backend"],
        )
        seconds = GaugeMetricFamily(
            "orderflow_exporter_backend_seconds",
            "Time this scrape spent reading each backend.",
            labels=["backend"],
        )
        for backend in sorted(up):
            backend_up.add_metric([backend], up[backend])
            seconds.add_metric([backend], self._durations.get(backend, 0.0))
        return [*families, backend_up, seconds]

    def _ingest(self) -> list[Metric]:
        with self._sources.database() as conn:
            rows = queries.in_flight_by_status(conn)
        return ingest_families(rows)

    def _webhooks(self) -> list[Metric]:
        from orderflow_ingest.webhooks.gauges import WEBHOOK_SQL, webhook_families

        with self._sources.database() as conn:
            row = conn.execute(WEBHOOK_SQL).fetchone()
        return webhook_families(row)

    def _domains(self) -> list[Metric]:
        from orderflow_ingest.domains.gauges import DOMAIN_SQL, domain_families

        with self._sources.database() as conn:
            rows = conn.execute(DOMAIN_SQL).fetchall()
        return domain_families(rows)

    def _s3(self) -> list[Metric]:
        assert self._sources.s3_probe is not None
        self._sources.s3_probe()
        return []

    @staticmethod
    def _listening(path: str) -> list[Metric]:
        if not unix_socket_listening(path):
            raise ConnectionError(f"nothing listens on {path}")
        return []

    def _disks(self) -> list[Metric]:
        usages = []
        failures = []
        for purpose, path_of in self._sources.disk_paths.items():
            try:
                usages.append(disk_usage(purpose, path_of()))
            except Exception as error:
                failures.append(f"{purpose}: {error}")
        if failures and not usages:
            raise OSError("; ".join(failures))
        return disk_families(usages, self._sources.disk_min_free)
