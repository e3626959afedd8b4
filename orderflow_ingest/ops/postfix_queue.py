"""Postfix's queue as data: `postqueue -j` parsed and summed up (the `queue` command, the
exporter's queue gauges, `sweep` and `show` looking up one queue id).

`postqueue -j` prints one JSON object per message (Postfix >= 3.1). It is streamed, never read
whole: a deferred queue during an outage can hold hundreds of thousands of messages. When
the mail system is down postqueue reads the queue directory itself and says so on stderr.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orderflow_ingest.ops.timeparse import human_duration

# The queues showq reports, in the order a message moves through them.
QUEUE_NAMES = ("maildrop", "incoming", "active", "deferred", "hold")
# Prefix qmgr adds while a destination is throttled; the cause after it is what matters.
SUSPENDED_PREFIX = "delivery temporarily suspended: "
MAX_REASON = 200
POSTQUEUE_TIMEOUT = 30.0


class PostqueueError(Exception):
    """postqueue could not be run or failed; the message says why."""


@dataclass(frozen=True)
class Recipient:
    address: str
    delay_reason: str | None


@dataclass(frozen=True)
class QueueEntry:
    queue_name: str
    queue_id: str
    arrival_time: float
    message_size: int
    sender: str
    forced_expire: bool
    recipients: tuple[Recipient, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_name": self.queue_name,
            "queue_id": self.queue_id,
            "arrival_time": self.arrival_time,
            "message_size": self.message_size,
            "sender": self.sender,
            "forced_expire": self.forced_expire,
            "recipients": [
                {"address": r.address, "delay_reason": r.delay_reason} for r in self.recipients
            ],
        }


def parse_entry(line: str) -> QueueEntry | None:
    """One line of `postqueue -j`, or None when it is not a message object we understand."""
    try:
        data = json.loads(line)
        recipients = tuple(
            Recipient(str(item["address"]), item.get("delay_reason"))
            for item in data.get("recipients", ())
        )
        return QueueEntry(
            queue_name=str(data["queue_name"]),
            queue_id=str(data["queue_id"]),
            arrival_time=float(data.get("arrival_time", 0)),
            message_size=int(data.get("message_size", 0)),
            sender=str(data.get("sender", "")),
            forced_expire=bool(data.get("forced_expire", False)),
            recipients=recipients,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def parse_lines(lines: Iterable[str]) -> Iterator[QueueEntry]:
    for line in lines:
        if line.strip():
            entry = parse_entry(line)
            if entry is not None:
                yield entry


def postqueue_command(config_dir: str) -> list[str]:
    binary = shutil.which("postqueue") or "/usr/sbin/postqueue"
    return [binary, "-c", config_dir, "-j"]


def _stream(config_dir: str, timeout: float, warnings: list[str]) -> Iterator[QueueEntry]:
    command = postqueue_command(config_dir)
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as error:
        raise PostqueueError(f"cannot run {command[0]}: {error.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    stderr_chunks: list[str] = []
    reader = threading.Thread(
        target=lambda: stderr_chunks.append(proc.stderr.read()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        yield from parse_lines(proc.stdout)
        returncode = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        reader.join(timeout=5)
        proc.stderr.close()
    stderr = "".join(stderr_chunks).strip()
    if returncode != 0:
        reason = "timed out" if returncode == -9 else (stderr.splitlines() or ["no output"])[-1]
        raise PostqueueError(f"postqueue -c {config_dir} -j failed: {reason}")
    warnings.extend(line for line in stderr.splitlines() if line.strip())


def normalise_reason(reason: str) -> str:
    """Group '...suspended: X' with X: it is the same cause, throttled."""
    if reason.startswith(SUSPENDED_PREFIX):
        reason = reason[len(SUSPENDED_PREFIX) :]
    return reason[:MAX_REASON]


@dataclass
class QueueSummary:
    messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    recipients: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    size_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    oldest_age_seconds: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(QUEUE_NAMES, None)
    )
    deferral_reasons: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.messages.values())

    def top_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        return self.deferral_reasons.most_common(limit)

    def as_dict(self, reasons: int = 5) -> dict[str, Any]:
        return {
            "total": self.total,
            "queues": {
                name: {
                    "messages": self.messages[name],
                    "recipients": self.recipients[name],
                    "size_bytes": self.size_bytes[name],
                    "oldest_age_seconds": self.oldest_age_seconds[name],
                }
                for name in self.messages
            },
            "top_deferral_reasons": [
                {"reason": reason, "messages": count} for reason, count in self.top_reasons(reasons)
            ],
            "warnings": self.warnings,
        }

    def render_text(self, reasons: int = 5) -> str:
        """A table of the queues, the top deferral reasons and any warnings (`queue`)."""
        lines = [f"{'queue':<10}{'messages':>10}{'recipients':>12}{'size':>12}  oldest"]
        for name in self.messages:
            lines.append(
                f"{name:<10}{self.messages[name]:>10}{self.recipients[name]:>12}"
                f"{self.size_bytes[name]:>12}  {human_duration(self.oldest_age_seconds[name])}"
            )
        top = self.top_reasons(reasons)
        if top:
            lines.append("top deferral reasons (messages):")
            lines.extend(f"{count:>8}  {reason}" for reason, count in top)
        lines.extend(f"note: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def summarize(entries: Iterable[QueueEntry], now: float | None = None) -> QueueSummary:
    """Counts, sizes and oldest age per queue; deferral reasons counted once per message."""
    now = time.time() if now is None else now
    summary = QueueSummary()
    for entry in entries:
        name = entry.queue_name
        for table in (summary.messages, summary.recipients, summary.size_bytes):
            table.setdefault(name, 0)
        summary.oldest_age_seconds.setdefault(name, None)
        summary.messages[name] += 1
        summary.recipients[name] += len(entry.recipients)
        summary.size_bytes[name] += entry.message_size
        age = max(0.0, now - entry.arrival_time)
        oldest = summary.oldest_age_seconds[name]
        if oldest is None or age > oldest:
            summary.oldest_age_seconds[name] = age
        if name in ("deferred", "hold"):
            reasons = {normalise_reason(r.delay_reason) for r in entry.recipients if r.delay_reason}
            summary.deferral_reasons.update(reasons)
    return summary


def queue_summary(config_dir: str, timeout: float = POSTQUEUE_TIMEOUT) -> QueueSummary:
    warnings: list[str] = []
    summary = summarize(_stream(config_dir, timeout, warnings))
    summary.warnings = warnings
    return summary


def find_queue_ids(config_dir: str, queue_ids: set[str]) -> dict[str, QueueEntry]:
    """The entries of these queue ids still in Postfix's queue (others are delivered or gone)."""
    if not queue_ids:
        return {}
    return {
        entry.queue_id: entry
        for entry in _stream(config_dir, POSTQUEUE_TIMEOUT, [])
        if entry.queue_id in queue_ids
    }
