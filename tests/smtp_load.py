"""SMTP load for the reliability suite: a retrying client pool and Postfix's smtp-source.

`SmtpLoad` behaves like a sending MTA: many concurrent sessions, a few messages per
connection, and a message that gets a 4xx (or a dropped connection, or a refused connect) is
tried again later with backoff, from whichever session is free. A 5xx is final. Each message
remembers its attempts and the client-side accept latency of the attempt that got "250"
(connection set-up included when the attempt opened the connection: that wait is the client's).

`smtp_source()` runs Postfix's own generator, which sends only one synthetic kind of message
and does not retry (so it is used where no refusal is expected).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import smtplib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from mime_builders import PNG, XLSX
from samples import address, minimal_pdf, order_email

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER_DOMAIN = "load.test"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PLACEHOLDER = "<MESSAGE-ID-PLACEHOLDER@load.test>"

# kind -> documents the extraction must produce for it
KINDS: dict[str, int] = {"plain": 0, "pdf": 1, "multi": 3}


def _template(kind: str, org: str) -> bytes:
    body = "Order lines:\n" + "".join(f"  A-{n:04d}  qty {n % 7 + 1}\n" for n in range(60))
    if kind == "plain":
        attachments: list[tuple[str, str, bytes]] = []
    elif kind == "pdf":
        attachments = [("PO-4711.pdf", "application/pdf", minimal_pdf("PO 4711"))]
    else:
        attachments = [
            ("PO-4712.pdf", "application/pdf", minimal_pdf("PO 4712")),
            ("lines.xlsx", XLSX_TYPE, XLSX),
        ]
    msg: EmailMessage = order_email(
        to=address(org),
        sender=f"buyer@{SENDER_DOMAIN}",
        subject=f"Load {kind} order",
        message_id=PLACEHOLDER,
        attachments=attachments,
        body=body,
    )
    if kind == "multi":
        msg.add_attachment(PNG, maintype="image", subtype="png", filename="photo.png")
    return msg.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


@dataclass
class Outgoing:
    """One message a client wants delivered, and what happened to it."""

    message_id: str
    org: str
    kind: str
    raw: bytes
    mail_from: str
    expected_documents: int
    attempts: int = 0
    tempfails: int = 0
    accepted: bool = False
    refused: tuple[int, str] | None = None
    gave_up: bool = False
    latency: float | None = None
    first_try: float | None = None  # time.monotonic() of the first attempt
    accepted_at: float | None = None  # time.time() of the 250
    last_error: str = ""

    @property
    def done(self) -> bool:
        return self.accepted or self.refused is not None or self.gave_up


class MessageFactory:
    """Unique messages of mixed kinds to several orgs, tagged so their rows can be found
    (every Message-ID starts with `<tag-`)."""

    def __init__(self, tag: str, orgs: Sequence[str], kinds: Sequence[str] = tuple(KINDS)):
        self.tag = tag
        self.orgs = list(orgs)
        self.kinds = list(kinds)
        self._templates = {(k, o): _template(k, o) for k in self.kinds for o in self.orgs}
        self._counter = itertools.count()

    def make(self, count: int) -> list[Outgoing]:
        out = []
        for _ in range(count):
            n = next(self._counter)
            kind = self.kinds[n % len(self.kinds)]
            org = self.orgs[(n // len(self.kinds)) % len(self.orgs)]
            message_id = f"<{self.tag}-{n:06d}-{uuid.uuid4().hex[:8]}@{SENDER_DOMAIN}>"
            raw = self._templates[(kind, org)].replace(PLACEHOLDER.encode(), message_id.encode())
            out.append(
                Outgoing(
                    message_id=message_id,
                    org=org,
                    kind=kind,
                    raw=raw,
                    mail_from=f"buyer@{SENDER_DOMAIN}",
                    expected_documents=KINDS[kind],
                )
            )
        return out


class _Schedule:
    """Messages by due time; `get` blocks until one is due, None once closed and empty."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Outgoing]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._pending = 0  # messages not done yet (queued or being tried)
        self._closed = False  # no new messages will be added

    def add(self, item: Outgoing, due: float, new: bool = True) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), item))
            if new:
                self._pending += 1
            self._cond.notify()

    def finished(self) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drop_unsent(self) -> list[Outgoing]:
        """Remove messages never tried yet (a stopped load sends nothing new)."""
        with self._cond:
            kept: list[tuple[float, int, Outgoing]] = []
            dropped: list[tuple[float, int, Outgoing]] = []
            for entry in self._heap:
                (dropped if entry[2].attempts == 0 else kept).append(entry)
            heapq.heapify(kept)
            self._heap = kept
            self._pending -= len(dropped)
            self._cond.notify_all()
            return [entry[2] for entry in dropped]

    def get(self, idle: float) -> Outgoing | bool | None:
        """A due message; False after `idle` s with nothing due; None when all is done."""
        deadline = time.monotonic() + idle
        with self._cond:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                if self._closed and self._pending == 0:
                    return None
                if now >= deadline:
                    return False
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                self._cond.wait(max(0.005, wait))


@dataclass
class LoadStats:
    connections: int = 0
    connect_failures: int = 0
    tempfail_codes: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tempfail(self, what: str) -> None:
        with self.lock:
            self.tempfail_codes[what] = self.tempfail_codes.get(what, 0) + 1


class SmtpLoad:
    """A pool of `sessions` SMTP client threads that deliver Outgoing messages with retry."""

    def __init__(
        self,
        host: str,
        port: int,
        sessions: int = 100,
        per_connection: int = 5,
        helo: str = f"mail.{SENDER_DOMAIN}",
        retry_for: float = 600.0,
        max_backoff: float = 8.0,
        timeout: float = 120.0,
        source_address: tuple[str, int] | None = None,
    ):
        self.host, self.port = host, port
        self.sessions = sessions
        self.per_connection = per_connection
        self.helo = helo
        self.retry_for = retry_for
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.source_address = source_address
        self.messages: list[Outgoing] = []
        self.stats = LoadStats()
        self._schedule = _Schedule()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- driving ----------------------------------------------------------------------------

    def start(self, messages: Iterable[Outgoing], rate: float | None = None) -> SmtpLoad:
        """Begin sending in the background; `rate` paces first attempts (messages/s)."""
        self.add(messages, rate)
        for index in range(self.sessions):
            thread = threading.Thread(target=self._session, name=f"smtp-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def add(self, messages: Iterable[Outgoing], rate: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            for index, item in enumerate(messages):
                self.messages.append(item)
                self._schedule.add(item, now + (index / rate if rate else 0.0))

    def stop_sending_new(self) -> list[Outgoing]:
        """No further first attempts; messages already tried go on being retried."""
        dropped = self._schedule.drop_unsent()
        with self._lock:
            ids = {id(item) for item in dropped}
            self.messages = [item for item in self.messages if id(item) not in ids]
        return dropped

    def finish(self, timeout: float | None = None) -> None:
        """Wait until every message is accepted, refused or given up."""
        self._schedule.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"SMTP sessions still busy after {timeout}s: {alive[:5]}")

    def run(self, messages: Iterable[Outgoing], rate: float | None = None) -> SmtpLoad:
        self.start(messages, rate)
        self.finish(self.retry_for + self.timeout + 60)
        return self

    # --- one session ------------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(
            self.host,
            self.port,
            local_hostname=self.helo,
            timeout=self.timeout,
            source_address=self.source_address,
        )
        smtp.ehlo()
        with self.stats.lock:
            self.stats.connections += 1
        return smtp

    def _session(self) -> None:
        smtp: smtplib.SMTP | None = None
        used = 0
        while True:
            item = self._schedule.get(idle=2.0)
            if item is None:
                break
            if item is False:  # idle: do not hold one of Postfix's smtpd processes
                _quit(smtp)
                smtp = None
                used = 0
                continue
            assert isinstance(item, Outgoing)
            started = time.monotonic()
            if item.first_try is None:
                item.first_try = started
            item.attempts += 1
            try:
                if smtp is None:
                    smtp = self._connect()
                    used = 0
                smtp.sendmail(item.mail_from, [address(item.org)], item.raw)
            except Exception as error:  # classified: final, or tried again later
                _quit(smtp)
                smtp = None
                self._failed(item, error)
                continue
            item.latency = time.monotonic() - started
            item.accepted = True
            item.accepted_at = time.time()
            self._schedule.finished()
            used += 1
            if used >= self.per_connection:
                _quit(smtp)
                smtp = None
        _quit(smtp)

    def _failed(self, item: Outgoing, error: Exception) -> None:
        code, text = _reply_of(error)
        item.last_error = f"{code} {text}".strip()
        if code is not None and 500 <= code < 600:
            item.refused = (code, text)
            self._schedule.finished()
            return
        item.tempfails += 1
        self.stats.tempfail(str(code) if code is not None else type(error).__name__)
        assert item.first_try is not None
        if time.monotonic() - item.first_try > self.retry_for:
            item.gave_up = True
            self._schedule.finished()
            return
        backoff = min(self.max_backoff, 0.5 * 2 ** min(item.tempfails, 6))
        self._schedule.add(item, time.monotonic() + backoff * random.uniform(0.7, 1.3), new=False)

    # --- results ----------------------------------------------------------------------------

    def latencies(self) -> list[float]:
        return [m.latency for m in self.messages if m.latency is not None]


def _reply_of(error: Exception) -> tuple[int | None, str]:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, raw = next(iter(error.recipients.values()))
        return int(code), raw.decode(errors="replace")
    if isinstance(error, smtplib.SMTPResponseException):
        reply: bytes | str = error.smtp_error
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        return int(error.smtp_code), text
    # A dropped connection, a refused connect, a timeout: no reply code, tried again later.
    return None, f"{type(error).__name__}: {error}"[:200]


def _quit(smtp: smtplib.SMTP | None) -> None:
    """Say goodbye, or just close when the server is gone."""
    if smtp is None:
        return
    try:
        smtp.quit()
    except Exception:
        with contextlib.suppress(Exception):
            smtp.close()


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (what "P95" means in the spec); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


# --- Postfix's smtp-source -------------------------------------------------------------------


@dataclass
class SmtpSourceRun:
    org: str
    sender: str
    messages: int
    sessions: int
    seconds: float
    returncode: int
    stderr: str


def smtp_source(
    host: str,
    port: int,
    orgs: Sequence[str],
    messages_per_org: int,
    sessions: int,
    size: int = 4096,
    tag: str = "srcload",
) -> list[SmtpSourceRun]:
    """One smtp-source per org, all at once, `sessions` concurrent sessions in total.

    Each run has its own envelope sender (how its rows are found) and its own HELO name,
    which smtp-source also puts in its Message-Ids (pid.fd.counter@helo): unique per run.
    """
    per_org = max(1, sessions // len(orgs))
    runs: list[tuple[str, str, float, subprocess.Popen[str]]] = []
    for org in orgs:
        run_id = uuid.uuid4().hex[:10]
        sender = f"{tag}-{run_id}@{SENDER_DOMAIN}"
        argv = [
            SMTP_SOURCE,
            "-4",
            "-s",
            str(per_org),
            "-m",
            str(messages_per_org),
            "-l",
            str(size),
            "-f",
            sender,
            "-t",
            address(org),
            "-M",
            f"{tag}-{run_id}.{SENDER_DOMAIN}",
            "-S",
            f"smtp-source load {run_id}",
            f"{host}:{port}",
        ]
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        runs.append((org, sender, time.monotonic(), process))
    results = []
    for org, sender, started, process in runs:
        _out, err = process.communicate(timeout=900)
        results.append(
            SmtpSourceRun(
                org=org,
                sender=sender,
                messages=messages_per_org,
                sessions=per_org,
                seconds=time.monotonic() - started,
                returncode=process.returncode,
                stderr=err[-2000:],
            )
        )
    return results
