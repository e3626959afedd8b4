"""Pure pieces of the operator tooling: postqueue -j parsing (real captured output), metric
families from the metrics hash, the exporter's loopback check, time parsing, doctor helpers."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from orderflow_ingest import metrics
from orderflow_ingest.ops import collector, doctor, exporter, postfix_queue, reprocess, trace
from orderflow_ingest.ops.command import reflow
from orderflow_ingest.ops.timeparse import human_duration, parse_duration, parse_when

DATA = Path(__file__).parent / "data"
# `postqueue -j` of a Postfix 3.7 instance with one message in active (a slow pipe transport),
# four deferred (relay refused) and one on hold; captured at CAPTURED_AT + a few seconds.
POSTQUEUE_OUTPUT = (DATA / "postqueue-j.jsonl").read_text()
CAPTURED_AT = 1795240190


# --- postqueue -j --------------------------------------------------------------------------


def test_postqueue_lines_parse_into_entries() -> None:
    entries = list(postfix_queue.parse_lines(POSTQUEUE_OUTPUT.splitlines()))
    assert [e.queue_name for e in entries] == [
        "active",
        "deferred",
        "deferred",
        "deferred",
        "deferred",
        "hold",
    ]
    active = entries[0]
    assert active.queue_id == "7477420C055"
    assert active.sender == "MAILER-DAEMON"
    assert active.recipients[0].address == "a@slow.example"
    assert active.recipients[0].delay_reason is None
    deferred = entries[1]
    assert deferred.message_size == 263
    assert {r.address for r in deferred.recipients} == {"y1@other.example", "x1@remote.example"}
    assert deferred.recipients[0].delay_reason == (
        "connect to 127.0.0.1[127.0.0.1]:9: Connection refused"
    )


def test_postqueue_parser_skips_what_it_does_not_understand() -> None:
    lines = ["", "not json", '{"queue_name": "deferred"}', "[1, 2]", *POSTQUEUE_OUTPUT.splitlines()]
    assert len(list(postfix_queue.parse_lines(lines))) == 6


def test_queue_summary_counts_ages_and_reasons() -> None:
    entries = postfix_queue.parse_lines(POSTQUEUE_OUTPUT.splitlines())
    summary = postfix_queue.summarize(entries, now=CAPTURED_AT + 100)
    assert summary.messages == {"maildrop": 0, "incoming": 0, "active": 1, "deferred": 4, "hold": 1}
    assert summary.recipients["deferred"] == 8
    assert summary.size_bytes["deferred"] == 4 * 263
    assert summary.oldest_age_seconds["deferred"] == pytest.approx(111)
    assert summary.oldest_age_seconds["active"] == pytest.approx(100)
    assert summary.oldest_age_seconds["incoming"] is None
    assert summary.total == 6
    # "delivery temporarily suspended: X" is the same cause as X; counted once per message.
    assert summary.top_reasons() == [("connect to 127.0.0.1[127.0.0.1]:9: Connection refused", 5)]
    data = summary.as_dict()
    assert data["queues"]["hold"]["messages"] == 1
    assert data["top_deferral_reasons"][0]["messages"] == 5


def test_queue_summary_text_is_a_table_then_the_reasons() -> None:
    summary = postfix_queue.summarize(
        postfix_queue.parse_lines(POSTQUEUE_OUTPUT.splitlines()), now=CAPTURED_AT + 100
    )
    lines = summary.render_text(reasons=1).splitlines()
    assert lines[0].split() == ["queue", "messages", "recipients", "size", "oldest"]
    assert lines[4].split() == ["deferred", "4", "8", str(4 * 263), "1m", "51s"]
    assert lines[6] == "top deferral reasons (messages):"
    assert lines[7].split(maxsplit=1) == ["5", summary.top_reasons(1)[0][0]]


def test_reprocess_statuses_and_what_a_request_names() -> None:
    assert reprocess.parse_statuses(["failed,parsed", " STORED "]) == ("FAILED", "PARSED", "STORED")
    with pytest.raises(ValueError, match="--status RECEIVED: use FAILED, PARSED or STORED"):
        reprocess.parse_statuses(["FAILED", "received"])
    assert reprocess.Request().names_nothing()
    assert not reprocess.Request(org="acme").names_nothing()
    assert reprocess.Request(limit=5).names_nothing()  # a limit alone selects nothing


def test_queue_summary_of_an_empty_queue_has_every_queue_at_zero() -> None:
    summary = postfix_queue.summarize([], now=0)
    assert summary.total == 0
    assert set(summary.messages) == set(postfix_queue.QUEUE_NAMES)


def test_postqueue_failure_is_an_error_not_an_empty_queue(tmp_path: Path) -> None:
    with pytest.raises(postfix_queue.PostqueueError, match=r"main\.cf"):
        postfix_queue.queue_summary(str(tmp_path / "missing"))


# --- metric families from the Redis hash ------------------------------------------------


def _exposition(families: list[Any]) -> str:
    class Static:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Static())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _hash(*records: tuple[str, str, float, dict[str, Any]]) -> dict[str, float]:
    """Record like the components do, and read back what flush() would have written."""
    values: dict[str, float] = {}
    for kind, name, value, labels in records:
        before = dict(metrics._pending)
        metrics._pending.clear()
        if kind == "count":
            metrics.count(name, value, **labels)
        else:
            metrics.observe(name, value, **labels)
        for field, amount in metrics._pending.items():
            values[field] = values.get(field, 0.0) + amount
        metrics._pending.clear()
        metrics._pending.update(before)
    return values


def test_counters_keep_the_spec_names_and_labels() -> None:
    values = _hash(
        ("count", "smtp_emails_received_total", 3, {"org_id": "o1", "status": "STORED"}),
        ("count", "smtp_emails_received_total", 1, {"org_id": "o2", "status": "FAILED"}),
        ("count", "smtp_processing_errors_total", 2, {"org_id": "o1", "error_type": "x"}),
    )
    text = _exposition(collector.families_from_hash(values))
    assert 'smtp_emails_received_total{org_id="o1",status="STORED"} 3.0' in text
    assert 'smtp_emails_received_total{org_id="o2",status="FAILED"} 1.0' in text
    assert 'smtp_processing_errors_total{error_type="x",org_id="o1"} 2.0' in text
    assert "# TYPE smtp_emails_received_total counter" in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["smtp_emails_received"].type == "counter"


def test_histograms_render_cumulative_buckets_sum_and_count() -> None:
    name = "smtp_attachment_extraction_duration_ms"
    values = _hash(("observe", name, 7, {}), ("observe", name, 300, {}), ("observe", name, 9e9, {}))
    text = _exposition(collector.families_from_hash(values))
    assert f"# TYPE {name} histogram" in text
    assert f'{name}_bucket{{le="10.0"}} 1.0' in text
    assert f'{name}_bucket{{le="250.0"}} 1.0' in text
    assert f'{name}_bucket{{le="500.0"}} 2.0' in text
    assert f'{name}_bucket{{le="+Inf"}} 3.0' in text
    assert f"{name}_count 3.0" in text
    assert f"{name}_sum {9e9 + 307:.1f}" in text or f"{name}_sum 9.000000307e+09" in text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)  # monotonic, as Prometheus requires


class _RecordingRedis:
    """Stands in for Redis in this unit test only: keeps each flushed batch apart."""

    def __init__(self) -> None:
        self.batches: list[dict[str, float]] = []

    def pipeline(self, transaction: bool = False) -> Any:
        batch: dict[str, float] = {}
        outer = self

        class Pipeline:
            def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
                batch[field] = batch.get(field, 0.0) + amount

            def execute(self) -> None:
                outer.batches.append(batch)

        return Pipeline()


def test_a_flush_never_splits_one_histogram_observation() -> None:
    """The delivery service flushes from a thread while its workers observe: every batch
    must hold whole observations, or a scrape shows bucket{le="+Inf"} != _count."""
    import threading

    name = "orderflow_delivery_seconds"
    fake = _RecordingRedis()
    saved = dict(metrics._pending)
    metrics._pending.clear()
    metrics.configure(fake, flush_interval=None)
    stop = threading.Event()

    def flush_continuously() -> None:
        while not stop.is_set():
            metrics.flush()

    flusher = threading.Thread(target=flush_continuously)
    flusher.start()
    try:
        for _ in range(20_000):
            metrics.observe(name, 0.02)
    finally:
        stop.set()
        flusher.join()
        metrics.flush()
        metrics.configure(None, flush_interval=None)
        metrics._pending.clear()
        metrics._pending.update(saved)
    inf = metrics.field_name(name + "_bucket", {"le": "+Inf"})
    total = metrics.field_name(name + "_count", {})
    assert len(fake.batches) > 1  # the flusher really ran between observations
    assert sum(batch.get(total, 0.0) for batch in fake.batches) == 20_000
    for batch in fake.batches:
        assert batch.get(inf, 0.0) == batch.get(total, 0.0)


def test_histogram_with_labels_and_a_lost_bucket_stays_monotonic() -> None:
    name = "orderflow_s3_put_seconds"
    values = _hash(("observe", name, 0.02, {"op": "raw"}), ("observe", name, 0.02, {"op": "raw"}))
    # A half-lost flush: one bucket field missing, another lower than the one before it.
    del values[metrics.field_name(name + "_bucket", {"op": "raw", "le": 0.05})]
    values[metrics.field_name(name + "_bucket", {"op": "raw", "le": 0.1})] = 1
    text = _exposition(collector.families_from_hash(values))
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)
    assert all(s.labels.get("op") == "raw" for s in family.samples)


def test_series_with_different_label_sets_and_junk_fields_do_not_break_the_scrape() -> None:
    values = _hash(
        ("count", "orderflow_deliveries_total", 2, {"outcome": "delivered"}),
        ("count", "orderflow_deliveries_total", 1, {}),
    )
    values["not json"] = 5
    values['["bad name!", {}]'] = 1
    values['["ok_total", {"bad label": "x"}]'] = 1
    text = _exposition(collector.families_from_hash(values))
    assert 'orderflow_deliveries_total{outcome="delivered"} 2.0' in text
    assert 'orderflow_deliveries_total{outcome=""} 1.0' in text
    assert "bad" not in text


def test_gauge_families_from_scrape_time_sources() -> None:
    summary = postfix_queue.summarize(
        postfix_queue.parse_lines(POSTQUEUE_OUTPUT.splitlines()), now=CAPTURED_AT + 100
    )
    families = [
        *collector.postfix_families(summary),
        *collector.ingest_families(
            [
                {"status": "STORED", "messages": 4, "oldest_seconds": 90.5},
                {"status": "RECEIVED", "messages": 1, "oldest_seconds": 12.0},
            ]
        ),
        *collector.rq_families([collector.RQQueueState("q", 5, 1, 2, 0, 3, 2)]),
        *collector.disk_families([collector.DiskUsage("spool", "/s", 10, 100)]),
    ]
    text = _exposition(families)
    assert 'orderflow_postfix_queue_messages{queue="deferred"} 4.0' in text
    assert 'orderflow_postfix_queue_messages{queue="incoming"} 0.0' in text
    assert 'orderflow_postfix_queue_oldest_seconds{queue="deferred"} 111.0' in text
    assert "orderflow_ingest_lag_seconds 90.5" in text
    assert 'orderflow_messages_pending{status="RECEIVED"} 1.0' in text
    assert 'orderflow_rq_jobs{queue="q",state="queued"} 5.0' in text
    assert 'orderflow_rq_jobs{queue="q",state="failed"} 3.0' in text
    assert 'orderflow_rq_workers{queue="q"} 2.0' in text
    assert 'orderflow_disk_free_bytes{path="/s",purpose="spool"} 10.0' in text
    assert "orderflow_ingest_lag_seconds 0.0" in _exposition(collector.ingest_families([]))


def test_timed_cache_computes_once_per_ttl_and_caches_failures() -> None:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("postqueue broke")
        return len(calls)

    cache = collector.TimedCache(compute, ttl=3600)
    for _ in range(3):
        with pytest.raises(OSError):
            cache.get()
    assert len(calls) == 1
    zero_ttl = collector.TimedCache(compute, ttl=0)
    assert zero_ttl.get() == 2
    assert zero_ttl.get() == 3


# --- the exporter's own loopback check ----------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9464", "127.0.0.53:1", "[::1]:9464", "localhost:9464"]
)
def test_loopback_addresses_are_accepted(listen: str) -> None:
    host, port = exporter.loopback_bind(listen)
    assert port in (9464, 1)
    assert host.startswith("127.") or host == "::1"


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", ":9464", "[::]:9464", "192.0.2.1:9464", "9464", "127.0.0.1:x"]
)
def test_non_loopback_addresses_are_refused(listen: str) -> None:
    with pytest.raises(exporter.NotLoopback):
        exporter.loopback_bind(listen)


# --- time parsing -------------------------------------------------------------------------


def test_durations_and_times() -> None:
    assert parse_duration("900") == timedelta(seconds=900)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    now = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    assert parse_when("24h", now) == now - timedelta(hours=24)
    assert parse_when("2024-05-01T10:14:00+00:00", now) == datetime(2024, 5, 1, 10, 14, tzinfo=UTC)
    assert parse_when("2024-05-01", now).tzinfo is not None
    assert parse_when("yesterday", now) < parse_when("today", now) <= now
    with pytest.raises(ValueError, match="not a time"):
        parse_when("last tuesday", now)
    assert human_duration(59) == "59s"
    assert human_duration(3725) == "1h 02m"
    assert human_duration(None) == "-"


# --- doctor helpers -----------------------------------------------------------------------


def test_milter_socket_setting_in_postfix_form() -> None:
    assert (
        doctor.postfix_milter_spec("/run/orderflow/milter.sock")
        == "unix:/run/orderflow/milter.sock"
    )
    assert doctor.postfix_milter_spec("inet:8891@127.0.0.1") == "inet:127.0.0.1:8891"
    assert doctor.postfix_milter_spec("unix:/x.sock") == "unix:/x.sock"


def test_listening_unix_socket_is_seen_in_proc(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    assert not doctor.unix_socket_listening(path)  # bound, not listening yet
    listener.listen(1)
    try:
        assert doctor.unix_socket_listening(path)
    finally:
        listener.close()
    assert not doctor.unix_socket_listening(path)


def test_disk_check_thresholds(tmp_path: Path) -> None:
    assert doctor.check_disk("d", str(tmp_path), 1).status == doctor.OK
    assert doctor.check_disk("d", str(tmp_path), 2**62).status == doctor.FAIL
    assert doctor.check_disk("d", str(tmp_path / "nope"), 1).status == doctor.FAIL


def test_help_text_reflows_paragraphs_and_keeps_examples() -> None:
    text = reflow(
        """First line.

        A paragraph
        over two lines.

        Examples:
          cmd --one
          cmd --two
        """
    )
    assert text.splitlines() == [
        "First line.",
        "",
        "A paragraph over two lines.",
        "",
        "Examples:",
        "  cmd --one",
        "  cmd --two",
    ]


# --- the Postfix log ----------------------------------------------------------------------

MAILLOG = DATA / "maillog-sample.log"  # a Postfix 3.7 maillog_file, captured with the above


def test_maillog_lines_of_a_queue_id() -> None:
    story = trace.maillog_lines(str(MAILLOG), {"E290520C1FB"})
    assert story["path"] == str(MAILLOG) and "error" not in story
    assert [line.split()[4] for line in story["lines"]] == [
        "postfix/pickup[13289]:",
        "postfix/cleanup[13379]:",
        "postfix/qmgr[13290]:",
        "postfix/smtp[13387]:",
        "postfix/smtp[13387]:",
    ]
    assert all(" E290520C1FB: " in line for line in story["lines"])


def test_maillog_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    story = trace.maillog_lines(str(tmp_path / "mail.log"), {"E290520C1FB"})
    assert story["lines"] == [] and "not found" in story["error"]


def test_queue_ids_found_from_a_message_id() -> None:
    message_id = "<20261121054939.E290520C1FB@cap.test>"
    assert trace.queue_ids_for_message_id(str(MAILLOG), message_id) == {"E290520C1FB"}
    assert trace.queue_ids_for_message_id(str(MAILLOG), "<nope@x>") == set()
