"""The reliability suite's harness (issue 7): a milter-enabled stack with workers, a
"systemd" that restarts killed services, faults on demand, and the accounting that turns a
scenario into figures (sent, accepted, STORED, PARSED, duplicates, bounced, deferred, drain
time, accept latency).

Used by tests/reliability/ (the full suite, `make reliability`) and by
tests/test_reliability_short.py (the short version inside `make test`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from dns_server import LoopbackDns
from psycopg.rows import dict_row
from smtp_load import SENDER_DOMAIN, SmtpLoad, SmtpSourceRun, percentile
from support_wait import poll_until

AUTHSERV = "mx.orderflow.test"
ORGS = ("acme", "globex", "initech", "umbrella", "disabled-co")
LOAD_ORGS = ("acme", "globex", "initech", "umbrella")
SERVICES = ("deliver", "milter", "worker")
# The units' RestartSec= (ansible: orderflow_ingest_restart_sec).
RESTART_SEC = 2.0
# Anything that says a component hit a fault of its own rather than a backend's.
SERVICE_FAULT_MARKERS = ('"delivery.internal_error"', '"milter.callback_failed"')
INTERNAL_ERROR_MARKERS = (*SERVICE_FAULT_MARKERS, "Traceback")

# Every figure a scenario reports, in table order.
FIGURES: list[Figures] = []
SUBTABLES: list[tuple[str, list[str], list[list[str]]]] = []


def reliability_dns() -> LoopbackDns:
    """A loopback DNS server that answers the load's SPF/DMARC look-ups at once."""
    dns = LoopbackDns().start()
    dns.txt(SENDER_DOMAIN, "v=spf1 ip4:127.0.0.0/8 -all")
    dns.txt(f"_dmarc.{SENDER_DOMAIN}", "v=DMARC1; p=none")
    dns.txt("attacker.example", "v=spf1 ip4:192.0.2.0/24 -all")
    return dns


def stack_options(dns: LoopbackDns, workers: int = 2, **extra: Any) -> dict[str, Any]:
    """StackOptions for the suite: milter on, workers running, anvil exempting only 127.0.0.1
    (so the abuse scenario, connecting from 127.0.0.2, meets the limits a stranger meets)."""
    settings = {
        "ORDERFLOW_DNS_SERVERS": dns.server,
        "ORDERFLOW_DNS_TIMEOUT": "2",
        "ORDERFLOW_AUTHSERV_ID": AUTHSERV,
        "ORDERFLOW_MILTER_LOOKUP_TIMEOUT": "2",
    }
    settings.update(extra.pop("extra_settings", {}))
    overrides = {"smtpd_client_event_limit_exceptions": "127.0.0.1"}
    overrides.update(extra.pop("postfix_overrides", {}))
    return {
        "milter": True,
        "workers": workers,
        "org_slugs": ORGS,
        "extra_settings": settings,
        "postfix_overrides": overrides,
        **extra,
    }


# --- figures ---------------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    tempfailed: int = 0  # SMTP attempts answered 4xx or dropped, which the client retried
    stored: int = 0  # accepted messages whose row reached STORED (raw in S3)
    parsed: int = 0
    failed: int = 0
    duplicates: int = 0  # extra rows, extra STORED/PARSED transitions, extra documents
    lost: int = 0  # accepted but not PARSED/FAILED, raw missing in S3, or documents missing
    altered: int = 0  # stored raw differs from what was sent (beyond LF and our trace fields)
    checked: int = 0  # stored raws compared byte for byte with what was sent
    bounced: int = 0
    deferred: int = 0  # distinct queue ids Postfix deferred at least once
    drain_seconds: float | None = None
    latencies: list[float] = field(default_factory=list)  # SMTP accept, client side
    processing: list[float] = field(default_factory=list)  # 250 -> PARSED/FAILED
    accept_rate: float | None = None
    notes: list[str] = field(default_factory=list)

    def row(self) -> list[str]:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        return [
            self.scenario,
            str(self.sent),
            str(self.accepted),
            str(self.stored),
            str(self.parsed),
            str(self.failed),
            str(self.duplicates),
            str(self.lost),
            f"{self.altered}/{self.checked}",
            str(self.bounced),
            str(self.deferred),
            str(self.tempfailed),
            secs(self.drain_seconds),
            secs(percentile(self.latencies, 50)),
            secs(percentile(self.latencies, 95)),
            secs(percentile(self.latencies, 99)),
            secs(percentile(self.processing, 95)),
            "-" if self.accept_rate is None else f"{self.accept_rate:.0f}",
        ]


HEADER = [
    "scenario",
    "sent",
    "accepted",
    "STORED",
    "PARSED",
    "FAILED",
    "dup",
    "lost",
    "raw≠sent",
    "bounced",
    "deferred",
    "4xx-retried",
    "drain s",
    "P50 s",
    "P95 s",
    "P99 s",
    "P95 to PARSED s",
    "acc msg/s",
]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def report_text() -> str:
    """The figures of every scenario run in this session, as text tables."""
    if not FIGURES and not SUBTABLES:
        return ""
    parts = [format_table(HEADER, [f.row() for f in FIGURES])] if FIGURES else []
    notes = [f"  {f.scenario}: {note}" for f in FIGURES for note in f.notes]
    if notes:
        parts.append("notes:\n" + "\n".join(notes))
    for title, header, rows in SUBTABLES:
        parts.append(f"{title}\n" + format_table(header, rows))
    return "\n\n".join(parts)


# --- the harness -----------------------------------------------------------------------------


@dataclass
class Window:
    """Where the logs stood when a scenario began."""

    started: float
    maillog: int
    logs: dict[str, int]


@dataclass
class Restart:
    component: str
    at: float
    expected: bool
    error: str = ""


class Harness:
    def __init__(self, stack: Any, dns: LoopbackDns):
        self.stack = stack
        self.dns = dns
        self.lock = threading.RLock()
        self.restarts: list[Restart] = []
        self._expected: set[str] = set()
        self._paused: set[str] = set()
        self._stop = threading.Event()
        self._dead_since: dict[str, float] = {}
        # Every process handle the stack ever held: a restarted service's handle is dropped
        # from the stack's table, and an unreaped, dropped Popen warns (an error under
        # pytest's filterwarnings). Held here, reaped by reap() after the stack is down.
        self._popens: list[subprocess.Popen[bytes]] = []
        self._remember_popens()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()

    def _remember_popens(self) -> None:
        for popen in list(self.stack.ctx.children.values()):
            if not any(popen is known for known in self._popens):
                self._popens.append(popen)

    def reap(self, timeout: float = 30) -> None:
        """Wait for every process the stack started (call after stack.down())."""
        for popen in self._popens:
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def log(self, text: str) -> None:
        """A timestamped line on stdout (pytest shows it for a failed test)."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- "systemd": Restart=always, RestartSec=2 for our services ----------------------------

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for name in SERVICES:
                if name == "worker" and not self.stack.options.workers:
                    continue
                with self.lock:
                    self._remember_popens()
                    if name in self._paused or self.stack.running(name):
                        self._dead_since.pop(name, None)
                        continue
                    dead_since = self._dead_since.setdefault(name, time.monotonic())
                    if time.monotonic() - dead_since < RESTART_SEC:
                        continue
                    restart = Restart(name, time.time(), expected=name in self._expected)
                    try:
                        self.stack.start_component(name)
                    except Exception as error:  # like systemd: try again on the next round
                        restart.error = str(error)[:300]
                    self._remember_popens()
                    self._expected.discard(name)
                    self._dead_since.pop(name, None)
                    self.restarts.append(restart)

    def unexpected_restarts(self, since: float) -> list[Restart]:
        return [r for r in self.restarts if r.at >= since and not r.expected]

    # --- faults ------------------------------------------------------------------------------

    def pid_of(self, name: str) -> int | None:
        ref = self.stack.ctx.ref(name)
        return None if ref is None or not ref.alive() else ref.pid

    def kill(self, name: str) -> None:
        """SIGKILL a service's whole process group (a worker with its work horse), as the
        OOM killer or a crash would; the supervisor brings it back after RestartSec."""
        with self.lock:
            pid = self.pid_of(name)
            if pid is None:
                raise AssertionError(f"{name} is not running")
            self._expected.add("worker" if name.startswith("worker-") else name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            popen = self.stack.ctx.children.get(name)
            if popen is not None:  # reap it: a dropped, unreaped Popen warns at exit
                with contextlib.suppress(Exception):
                    popen.wait(timeout=10)

    def workers(self) -> list[str]:
        return [f"worker-{n}" for n in range(1, self.stack.options.workers + 1)]

    def scheduler_holder(self) -> str | None:
        """The worker whose RQ scheduler holds the attachment queue's scheduler lock (it
        alone moves failed jobs' retries back to the queue when their backoff is over)."""
        from orderflow_ingest.job_queue import make_redis

        settings = self.stack.settings
        with make_redis(settings) as redis:
            name = redis.get(f"rq:scheduler-lock:{settings.attachment_queue}")
            if not name:
                return None
            data = redis.hgetall(f"rq:scheduler:{name.decode()}")
        pid = int(data.get(b"pid", b"0") or 0)
        parent = _parent_pid(pid)
        for worker in self.workers():
            if self.pid_of(worker) in (pid, parent):
                return worker
        return None

    def kill_worker_mid_job(self, name: str = "worker-1", timeout: float = 30) -> bool:
        """SIGKILL a worker while its work horse runs a job; False if no job was seen."""
        pid = self.pid_of(name)
        busy = poll_until(lambda: pid is not None and bool(_children(pid)), timeout, 0.02)
        self.kill(name)
        return busy is not None

    def pipe_processes(self) -> list[int]:
        """This stack's pipe(8) processes (children of its Postfix master; other stacks on the
        machine run the same binaries and are never touched)."""
        pid_file = self.stack.postfix.queue_dir / "pid" / "master.pid"
        try:
            master = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [pid for pid in _children(master) if _comm(pid) == "pipe" and _alive(pid)]

    def client_processes(self) -> list[int]:
        """The pipe clients (deliver.c) pipe(8) is running for this stack right now."""
        return [child for pid in self.pipe_processes() for child in _children(pid) if _alive(child)]

    def kill_mid_message(self, what: str, timeout: float = 60) -> bool:
        """SIGKILL the pipe client ("client") or Postfix's pipe(8) ("pipe") while a message
        is being handed over; False when none was running within `timeout`."""
        find = self.client_processes if what == "client" else self.pipe_processes
        found: list[int] = []

        def look() -> bool:
            # pipe(8) is mid-message only while it has a client running
            if what == "pipe" and not self.client_processes():
                return False
            found[:] = find()
            return bool(found)

        if poll_until(look, timeout, 0.005) is None:
            return False
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True

    def stop(self, name: str) -> None:
        with self.lock:
            self._remember_popens()
            self._paused.add(name)
            self.stack.stop_component(name)

    def start(self, name: str) -> None:
        with self.lock:
            self.stack.start_component(name)
            self._paused.discard(name)
            self._remember_popens()

    def outage(self, name: str, seconds: float) -> float:
        """Stop `name`, keep it down `seconds`, start it; returns the seconds it was down."""
        started = time.monotonic()
        self.stop(name)
        self.log(f"{name} stopped (took {time.monotonic() - started:.1f}s)")
        time.sleep(seconds)
        back = time.monotonic()
        self.start(name)
        down = time.monotonic() - started
        self.log(f"{name} started (took {time.monotonic() - back:.1f}s); down {down:.1f}s")
        return down

    def restart(self, name: str) -> None:
        with self.lock:
            self._remember_popens()
            self._paused.add(name)
            try:
                self.stack.restart_component(name)
            finally:
                self._paused.discard(name)
                self._remember_popens()

    def all_running(self) -> dict[str, bool]:
        names = ["postgres", "redis", "s3", "postfix", *SERVICES]
        return {name: self.stack.running(name) for name in names}

    # --- observation -------------------------------------------------------------------------

    def window(self) -> Window:
        logs = {}
        for path in self._log_paths():
            logs[str(path)] = path.stat().st_size if path.exists() else 0
        return Window(time.time(), _size(self.stack.maillog_path), logs)

    def _log_paths(self) -> list[Path]:
        logs = self.stack.base_dir / "logs"
        return sorted(p for p in logs.glob("*.log"))

    def log_problems(
        self, window: Window, markers: Sequence[str] = INTERNAL_ERROR_MARKERS
    ) -> list[str]:
        """Lines since `window` that show a component's own fault (tracebacks and
        internal errors), as opposed to a backend outage it handled. During an outage a job
        that cannot reach S3 raises and RQ logs its traceback before retrying it: fault
        scenarios pass SERVICE_FAULT_MARKERS instead."""
        found = []
        for path in self._log_paths():
            for line in _read_from(path, window.logs.get(str(path), 0)).splitlines():
                if any(marker in line for marker in markers):
                    found.append(f"{path.name}: {line[:400]}")
        return found

    def maillog_since(self, window: Window) -> str:
        return _read_from(self.stack.maillog_path, window.maillog)

    def queue_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            for entry in self.stack.postqueue():
                name = entry.get("queue_name", "?")
                counts[name] = counts.get(name, 0) + 1
        return counts

    def deferred_now(self) -> int:
        return self.queue_counts().get("deferred", 0)

    def wait_deferred_drained(self, timeout: float = 120) -> float | None:
        """Seconds until Postfix's deferred queue is empty (by itself: no flush)."""
        return poll_until(lambda: self.deferred_now() == 0, timeout, 0.5)

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(
            self.stack.settings.database_url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=10,
        )

    # --- accounting --------------------------------------------------------------------------

    def rows(self, tag: str | None, senders: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Rows of messages whose Message-ID starts with <tag- or whose envelope sender is
        one of `senders`, with their status history and document count."""
        query = """
            SELECT m.id::text AS id, m.message_id AS source_message_id, m.envelope_sender,
                   m.status,
                   m.error_json, m.raw_storage_key, o.slug::text AS slug,
                   extract(epoch FROM m.received_at)::float8 AS received,
                   (SELECT count(*) FROM inbound_message_event e
                     WHERE e.inbound_message_id = m.id AND e.status = 'STORED') AS stored_events,
                   (SELECT count(*) FROM inbound_message_event e
                     WHERE e.inbound_message_id = m.id AND e.status = 'PARSED') AS parsed_events,
                   (SELECT extract(epoch FROM max(e.at))::float8 FROM inbound_message_event e
                     WHERE e.inbound_message_id = m.id AND e.status IN ('PARSED', 'FAILED'))
                     AS done,
                   (SELECT count(*) FROM document d WHERE d.inbound_message_id = m.id)
                     AS documents
              FROM inbound_message m JOIN org o ON o.id = m.org_id
             WHERE m.message_id LIKE %s OR m.envelope_sender = ANY(%s)
        """
        like = f"<{tag}-%" if tag else "<no tag>"
        with self.connect() as conn:
            return conn.execute(query, (like, list(senders))).fetchall()

    def unfinished(self, tag: str | None, senders: Sequence[str] = ()) -> int:
        """Rows not yet PARSED or FAILED, plus anything still in Postfix's queue."""
        try:
            with self.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM inbound_message"
                    " WHERE (source_message_id LIKE %s OR envelope_sender = ANY(%s))"
                    " AND status IN ('RECEIVED', 'STORED')",
                    (f"<{tag}-%" if tag else "<no tag>", list(senders)),
                ).fetchone()
        except psycopg.Error:
            return 1
        queued = sum(self.queue_counts().values())
        return int(row["n"] if row else 0) + queued

    def wait_finished(
        self, tag: str | None, senders: Sequence[str], expected: int, timeout: float
    ) -> float | None:
        """Seconds until Postfix's queue is empty and all `expected` rows are done."""

        def done() -> bool:
            if self.unfinished(tag, senders):
                return False
            with self.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM inbound_message"
                    " WHERE source_message_id LIKE %s OR envelope_sender = ANY(%s)",
                    (f"<{tag}-%" if tag else "<no tag>", list(senders)),
                ).fetchone()
            return int(row["n"] if row else 0) >= expected

        return poll_until(done, timeout, 1.0)

    def all_done(self, messages: Sequence[Any]) -> bool:
        """Every one of these Outgoing messages settled: refused or given up by the client,
        or accepted and its row PARSED or FAILED."""
        if not all(m.done for m in messages):
            return False
        wanted = {m.message_id for m in messages if m.accepted}
        if not wanted:
            return True
        try:
            with self.connect() as conn:
                rows = conn.execute(
                    "SELECT count(*) AS n FROM inbound_message"
                    " WHERE source_message_id = ANY(%s) AND status IN ('PARSED', 'FAILED')",
                    (list(wanted),),
                ).fetchone()
        except psycopg.Error:
            return False
        return int(rows["n"] if rows else 0) >= len(wanted)

    def raw_keys(self) -> set[str]:
        from orderflow_ingest.storage import make_client

        client = make_client(self.stack.settings)
        keys: set[str] = set()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.stack.settings.s3_bucket, Prefix="raw/"):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def account(
        self,
        figures: Figures,
        window: Window,
        tag: str | None = None,
        load: SmtpLoad | None = None,
        sources: Sequence[SmtpSourceRun] = (),
    ) -> Figures:
        """Fill `figures` from the clients' records, the database, S3 and the maillog."""
        messages = load.messages if load is not None else []
        senders = [run.sender for run in sources]
        rows = self.rows(tag, senders)
        keys = self.raw_keys()
        by_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
        by_sender: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_id.setdefault((row["slug"], row["source_message_id"]), []).append(row)
            by_sender.setdefault(row["envelope_sender"], []).append(row)

        tried = [m for m in messages if m.attempts]
        figures.sent += len(tried) + sum(run.messages for run in sources)
        figures.refused += sum(1 for m in tried if m.refused)
        figures.tempfailed += sum(m.tempfails for m in tried)
        figures.latencies += [m.latency for m in tried if m.latency is not None]
        gave_up = [m for m in tried if m.gave_up]
        if gave_up:
            figures.notes.append(
                f"{len(gave_up)} messages never accepted within the client's retry time"
                f" (last: {gave_up[-1].last_error})"
            )
        expected: list[tuple[list[dict[str, Any]], int, float | None, bytes | None]] = []
        for m in tried:
            if m.accepted:
                expected.append(
                    (
                        by_id.get((m.org, m.message_id), []),
                        m.expected_documents,
                        m.accepted_at,
                        m.raw,
                    )
                )
        extra_rows = sum(len(by_id.get((m.org, m.message_id), [])) for m in tried if not m.accepted)
        if extra_rows:
            figures.notes.append(
                f"{extra_rows} rows for messages the client never saw accepted"
                " (connection lost after the data was queued; the client gave up)"
            )
        figures.accepted += len(expected)
        for run in sources:
            if run.returncode != 0:
                figures.notes.append(f"smtp-source exit {run.returncode}: {run.stderr[-300:]}")
                continue
            figures.accepted += run.messages
            got = by_sender.get(run.sender, [])
            figures.duplicates += max(0, len(got) - run.messages)
            figures.lost += max(0, run.messages - len(got))
            for row in got[: run.messages]:
                expected.append(([row], 0, None, None))  # smtp-source: its bytes are not ours

        integrity = RawChecker(self)
        for found, documents, accepted_at, sent in expected:
            figures.duplicates += max(0, len(found) - 1)
            if not found:
                figures.lost += 1
                continue
            row = found[0]
            figures.duplicates += max(0, row["stored_events"] - 1) + max(
                0, row["parsed_events"] - 1
            )
            if row["stored_events"]:
                figures.stored += 1
            if row["raw_storage_key"] not in keys:
                figures.lost += 1
                figures.notes.append(f"raw missing in S3 for {row['id']}")
            elif sent is not None:
                integrity.check(figures, row, sent)
            if row["status"] == "PARSED":
                figures.parsed += 1
                figures.duplicates += max(0, row["documents"] - documents)
                if row["documents"] < documents:
                    figures.lost += 1
                    figures.notes.append(
                        f"{row['id']}: {row['documents']} documents, expected {documents}"
                    )
            elif row["status"] == "FAILED":
                figures.failed += 1
            else:
                figures.lost += 1
            if row["done"] is not None:
                start = accepted_at if accepted_at is not None else row["received"]
                figures.processing.append(max(0.0, row["done"] - start))

        log = self.maillog_since(window)
        figures.bounced += len(BOUNCED.findall(log))
        figures.deferred += len(set(DEFERRED.findall(log)))
        return figures


class RawChecker:
    """Fetches stored raws and counts those that differ from what the client sent."""

    def __init__(self, harness: Harness):
        from orderflow_ingest.storage import make_client

        self.client = make_client(harness.stack.settings)
        self.bucket = harness.stack.settings.s3_bucket

    def stored(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def check(self, figures: Figures, row: dict[str, Any], sent: bytes) -> str | None:
        figures.checked += 1
        difference = raw_difference(sent, self.stored(row["raw_storage_key"]))
        if difference is not None:
            figures.altered += 1
            if figures.altered <= 5:
                figures.notes.append(f"raw of {row['id']} is not what was sent: {difference}")
        return difference


DEFERRED = re.compile(r"postfix/pipe\[\d+\]: ([0-9A-Za-z]+): to=<[^>]*>.*status=deferred")
BOUNCED = re.compile(r": ([0-9A-Za-z]+): to=<[^>]*orderflow\.test>.*status=bounced")


def _parent_pid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rfind(")") + 2 :].split()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (a killed one stays listed until then)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- byte integrity: the stored raw is what was sent ------------------------------------------

# Header fields our own hosts add in front of a message: Postfix's Received, pipe(8)'s
# Return-Path (flags=R), the milter's Authentication-Results.
ADDED_FIELDS = {b"return-path", b"received", b"authentication-results", b"delivered-to"}


def _fields(block: bytes) -> list[bytes]:
    """A header block as its fields, continuation lines kept with their field."""
    fields: list[bytes] = []
    for line in block.split(b"\n"):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += b"\n" + line
        elif line:
            fields.append(line)
    return fields


def raw_difference(sent: bytes, stored: bytes) -> str | None:
    """None when `stored` is `sent` with LF line ends and only our own trace fields added;
    else what differs. Compared by sha256 of the body and of the sender's header fields."""
    import hashlib

    sent = sent.replace(b"\r\n", b"\n")
    if not sent.endswith(b"\n"):
        sent += b"\n"
    sent_head, _, sent_body = sent.partition(b"\n\n")
    stored_head, _, stored_body = stored.partition(b"\n\n")
    if hashlib.sha256(sent_body).digest() != hashlib.sha256(stored_body).digest():
        return f"body differs: sent {len(sent_body)} bytes, stored {len(stored_body)}"
    theirs = _fields(sent_head)
    kept: list[bytes] = []
    remaining = list(theirs)
    for line in _fields(stored_head):
        if remaining and line == remaining[0]:
            kept.append(remaining.pop(0))
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if name not in ADDED_FIELDS:
            return f"header field changed or added: {line[:80]!r}"
    if remaining:
        return f"sender's header field missing: {remaining[0][:80]!r}"
    if hashlib.sha256(b"\n".join(kept)).digest() != hashlib.sha256(sent_head).digest():
        return "header block differs"
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def reliability_stack(keep: bool = False, workers: int = 2, **options: Any) -> Iterator[Harness]:
    """Start the suite's stack with its DNS server and supervisor; stop and reap it all.

    Not conftest's make_stack: services are killed and restarted here, and their process
    handles must be reaped after the stack is down (see Harness._popens).
    """
    from orderflow_ingest import db, orgs
    from orderflow_ingest.devstack.stack import Stack, StackOptions

    dns = reliability_dns()
    base = Path(tempfile.mkdtemp(prefix="orderflow-stack-", dir="/tmp"))
    base.chmod(0o755)  # the postgres, postfix and orderflow users must reach it
    stack = Stack(base, StackOptions(**stack_options(dns, workers=workers, **options)))
    harness: Harness | None = None
    try:
        stack.up()
        with db.connect(stack.settings.migrate_url) as conn:
            orgs.set_org_status(conn, "disabled-co", "disabled")
            conn.commit()
        harness = Harness(stack, dns)
        try:
            yield harness
        finally:
            harness.close()
    finally:
        stack.down()
        if harness is not None:
            harness.reap()
        dns.stop()
        if keep:
            print(f"\nreliability stack kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def timed(action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


# --- hostile input ---------------------------------------------------------------------------

ENHANCED_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")


@dataclass
class HostileResult:
    name: str
    marker: str
    outcome: str  # stored | refused | tempfail-gave-up | lost
    code: int | None = None
    text: str = ""
    status: str | None = None
    reason: str = ""
    problems: list[str] = field(default_factory=list)


def send_hostile(
    harness: Harness, names: Sequence[str], org: str = "acme", sessions: int = 4
) -> list[HostileResult]:
    """Send each corpus entry (envelope sender <marker>@attacker.example, which is how its row
    is found: some entries have no usable Message-ID) and judge what became of it."""
    from hostile import build
    from samples import address
    from smtp_load import Outgoing

    outgoing = []
    for name in names:
        marker, raw = build(name, address(org))
        outgoing.append(
            Outgoing(
                message_id=name,
                org=org,
                kind=name,
                raw=raw,
                mail_from=f"{marker}@attacker.example",
                expected_documents=0,
            )
        )
    load = SmtpLoad(
        harness.stack.smtp_host,
        harness.stack.smtp_port,
        sessions=sessions,
        per_connection=1,
        helo="mail.attacker.example",
        retry_for=60,
    )
    load.run(outgoing)
    senders = [m.mail_from for m in outgoing if m.accepted]
    poll_until(lambda: harness.unfinished(None, senders) == 0, 180, 1.0)
    rows = {row["envelope_sender"]: row for row in harness.rows(None, senders)}
    results = []
    with harness.connect() as conn:
        for m in outgoing:
            marker = m.mail_from.split("@", 1)[0]
            result = HostileResult(name=m.kind, marker=marker, outcome="lost")
            if m.refused is not None:
                result.outcome, (result.code, result.text) = "refused", m.refused
                if not (500 <= m.refused[0] < 600 and ENHANCED_STATUS.match(m.refused[1])):
                    result.problems.append(f"refusal without a clear code: {m.refused}")
            elif not m.accepted:
                result.outcome = "tempfail-gave-up"
                result.problems.append(f"never accepted: {m.last_error}")
            else:
                row = rows.get(m.mail_from)
                if row is None:
                    result.problems.append("accepted but no row")
                else:
                    result.outcome = "stored"
                    result.status = row["status"]
                    result.problems += _judge_stored(conn, row)
                    result.reason = _reason(conn, row)
            results.append(result)
    return results


def _judge_stored(conn: Any, row: dict[str, Any]) -> list[str]:
    problems = []
    if row["status"] == "FAILED":
        error = row["error_json"] or {}
        if not (error.get("reason") or error.get("error")):
            problems.append(f"FAILED without a reason: {error!r}")
    elif row["status"] == "PARSED":
        for document in conn.execute(
            "SELECT status, decision_json FROM document WHERE inbound_message_id = %s",
            (row["id"],),
        ).fetchall():
            decision = document["decision_json"] or {}
            if not decision.get("reason"):
                problems.append(f"document without a decision reason: {decision!r}")
        for part in conn.execute(
            "SELECT part_path, reason FROM inbound_message_part WHERE inbound_message_id = %s",
            (row["id"],),
        ).fetchall():
            if not part["reason"]:
                problems.append(f"part {part['part_path']} without a reason")
    else:
        problems.append(f"still {row['status']}")
    if not row["raw_storage_key"]:
        problems.append("no raw_storage_key")
    return problems


def _reason(conn: Any, row: dict[str, Any]) -> str:
    if row["status"] == "FAILED":
        error = row["error_json"] or {}
        return str(error.get("reason") or error.get("error"))[:80]
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM document WHERE inbound_message_id = %(id)s) AS documents,"
        " (SELECT count(*) FROM document WHERE inbound_message_id = %(id)s"
        "   AND status = 'FAILED') AS corrupt,"
        " (SELECT count(*) FROM inbound_message_part WHERE inbound_message_id = %(id)s) AS parts",
        {"id": row["id"]},
    ).fetchone()
    return f"{counts['documents']} documents ({counts['corrupt']} corrupt), {counts['parts']} parts"


def hostile_table(results: Sequence[HostileResult]) -> tuple[str, list[str], list[list[str]]]:
    rows = [
        [
            r.name,
            r.outcome if r.code is None else f"{r.outcome} {r.code}",
            r.status or (r.text[:40] if r.text else "-"),
            r.reason or "-",
            "; ".join(r.problems)[:80] or "ok",
        ]
        for r in results
    ]
    return ("hostile corpus", ["entry", "SMTP", "status", "result", "problems"], rows)


# --- the table at the end of the pytest run --------------------------------------------------


class FiguresReporter:
    """A pytest plugin printing report_text() in the terminal summary; also written to
    $RELIABILITY_REPORT when that is set (a file path)."""

    name = "orderflow-reliability-figures"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        text = report_text()
        if not text:
            return
        terminalreporter.section("reliability figures")
        terminalreporter.write_line(text)
        target = os.environ.get("RELIABILITY_REPORT")
        if target:
            Path(target).write_text(text + "\n")


def ensure_reporter(config: Any) -> None:
    if not config.pluginmanager.has_plugin(FiguresReporter.name):
        config.pluginmanager.register(FiguresReporter(), FiguresReporter.name)


# --- faults while mail flows -----------------------------------------------------------------


class QueuePeak:
    """Samples Postfix's queue in the background: the peak of deferred messages."""

    def __init__(self, harness: Harness, interval: float = 1.0):
        self.harness = harness
        self.interval = interval
        self.peak_deferred = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-peak", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_deferred = max(self.peak_deferred, self.harness.deferred_now())

    def __enter__(self) -> QueuePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


Step = tuple[str, Callable[[Harness], float]]


def not_the_scheduler(harness: Harness) -> str:
    """A worker that does not run the RQ scheduler (see test_rel_2b_scheduler.py for why
    killing the one that does is a case of its own)."""
    holder = harness.scheduler_holder()
    return next(w for w in harness.workers() if w != holder)


def killed(name: str, component: str | None = None) -> Callable[[Harness], float]:
    """A step: SIGKILL `name` ("worker" = a worker not running the RQ scheduler); returns
    the seconds until the supervisor had it back."""

    def step(harness: Harness) -> float:
        started = time.monotonic()
        if name == "worker":
            worker = not_the_scheduler(harness)
            mid_job = harness.kill_worker_mid_job(worker)
            harness.log(f"{worker} SIGKILLed (a job was running: {mid_job})")
        else:
            harness.kill(name)
            harness.log(f"{name} SIGKILLed")
        back = poll_until(lambda: harness.stack.running(component or name), 120, 0.2)
        return time.monotonic() - started if back is not None else float("nan")

    return step


def stopped(name: str, seconds: float) -> Callable[[Harness], float]:
    return lambda harness: harness.outage(name, seconds)


def restarted(name: str) -> Callable[[Harness], float]:
    def step(harness: Harness) -> float:
        took = timed(lambda: harness.restart(name))
        harness.log(f"{name} restarted in {took:.1f}s")
        return took

    return step


def run_under_load(
    harness: Harness,
    title: str,
    steps: Sequence[Step],
    rate: float,
    sessions: int = 20,
    lead_in: float = 5.0,
    settle: float = 3.0,
    finish_timeout: float = 480.0,
    extra: Callable[[str], Sequence[Any]] | None = None,
    extra_rate: float = 0.5,
) -> tuple[Figures, SmtpLoad]:
    """Mail flows at `rate` messages/s while each step runs in turn; after each, the time
    until the deferred queue is empty again (by itself, at Postfix's own retry pace) is
    recorded. Then the load stops and everything must end PARSED."""
    from smtp_load import MessageFactory

    tag = f"{title.split(':')[0].replace(' ', '')}-{os.urandom(3).hex()}"
    window = harness.window()
    load = SmtpLoad(
        harness.stack.smtp_host, harness.stack.smtp_port, sessions=sessions, retry_for=600
    )
    load.start(MessageFactory(tag, LOAD_ORGS).make(int(rate * 1800)), rate=rate)
    if extra is not None:  # e.g. large messages, so that a kill lands mid-message
        load.add(extra(tag), rate=extra_rate)
    harness.log(f"{title}: load at {rate}/s, {sessions} sessions")
    time.sleep(lead_in)
    rows: list[list[str]] = []
    for label, action in steps:
        tempfails_before = sum(load.stats.tempfail_codes.values())
        restarts_before = len(harness.restarts)
        with QueuePeak(harness) as peak:
            down = action(harness)
            drain = harness.wait_deferred_drained(timeout=180)
        harness.log(f"{label}: down {down:.1f}s, deferred drained after {drain}")
        tempfails = sum(load.stats.tempfail_codes.values()) - tempfails_before
        unexpected = [r.component for r in harness.restarts[restarts_before:] if not r.expected]
        rows.append(
            [
                label,
                f"{down:.1f}",
                str(peak.peak_deferred),
                str(tempfails),
                "not drained" if drain is None else f"{drain:.1f}",
                ", ".join(unexpected) or "-",
            ]
        )
        time.sleep(settle)
    # Mail goes on flowing until everything sent so far is PARSED (an MX is rarely quiet;
    # a quiet queue after a killed scheduler is test_rel_2b_scheduler.py's case).
    recovered = time.monotonic()
    before = [m for m in load.messages if m.first_try is not None and m.first_try < recovered]
    drained = poll_until(lambda: harness.all_done(before), finish_timeout, 1.0)
    harness.log(f"{title}: everything sent before recovery PARSED after {drained}")
    dropped = load.stop_sending_new()
    harness.log(f"{title}: load stopped ({len(dropped)} planned messages not sent)")
    load.finish(timeout=finish_timeout)
    accepted = sum(1 for m in load.messages if m.accepted)
    finished = harness.wait_finished(tag, [], accepted, timeout=finish_timeout)
    harness.log(f"{title}: all PARSED after {finished}")
    figures = harness.account(Figures(title), window, tag=tag, load=load)
    if finished is not None:
        figures.drain_seconds = drained
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(load.stats.tempfail_codes.items()))
    if codes:
        figures.notes.append(f"client retried after {codes}")
    SUBTABLES.append(
        (
            f"{title}: each step while mail flows at {rate}/s",
            ["step", "down s", "peak deferred", "4xx/drops retried", "drain s", "crashed"],
            rows,
        )
    )
    FIGURES.append(figures)
    return figures, load
