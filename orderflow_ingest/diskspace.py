"""Back-pressure before the disk fills: is there headroom on the spool and Postfix's queue?

The milter asks at MAIL FROM (answering `452 4.3.1 Insufficient system storage` when a file
system is under ORDERFLOW_MIN_FREE_MB) and the delivery service asks before it spools a message
(answering 75, so pipe(8) defers). Both must stay cheap and must never turn a broken check into
refused mail: one statvfs per file system at most once per CACHE_SECONDS whatever the message
rate, and a statvfs that fails counts as "enough space" (logged once, when it starts failing).
A sender told 452 retries later; a sender told 5xx would give up, so nothing here ever says 5xx.

Our threshold sits above Postfix's own queue_minfree (postfix-config/README.md, "Size and
disk"), so senders meet our 452 first, with our log line and metric, while the last room on
the disk still holds the messages already in DATA.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orderflow_ingest.logs import log_event

if TYPE_CHECKING:
    from orderflow_ingest.settings import Settings

MIB = 1024 * 1024
CACHE_SECONDS = 1.0
# What a full disk looks like to a write: no space left, or over the user's quota.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Headroom:
    """One file system as statvfs saw it; free_bytes is None when statvfs failed."""

    purpose: str  # "spool" or "postfix_queue"
    path: str
    free_bytes: int | None
    size_bytes: int | None = None
    error: str | None = None


def min_free_bytes(min_free_mb: int) -> int:
    """ORDERFLOW_MIN_FREE_MB in bytes (MiB; 0 turns the check off)."""
    return max(0, min_free_mb) * MIB


def is_short(headroom: Headroom, min_free: int) -> bool:
    """Under the threshold. An unknown free space (statvfs failed) is never short: a broken
    check must not refuse mail."""
    return min_free > 0 and headroom.free_bytes is not None and headroom.free_bytes < min_free


def first_short(headrooms: list[Headroom], min_free: int) -> Headroom | None:
    """The first file system under the threshold, or None when every one has room."""
    return next((headroom for headroom in headrooms if is_short(headroom, min_free)), None)


def postfix_floor(queue_minfree: int, message_size_limit: int) -> int:
    """Free bytes under which Postfix's smtpd itself answers 452 4.3.1 at MAIL FROM: it
    wants more than queue_minfree and more than 1.5 x message_size_limit (smtpd_check.c)."""
    return max(queue_minfree, message_size_limit * 3 // 2)


def is_out_of_space(error: BaseException) -> bool:
    """Whether an exception is a write that found the disk (or the quota) full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def measure(
    purpose: str, path: str, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
) -> Headroom:
    """Free and total bytes of the file system holding `path`; never raises.

    f_bavail, not f_bfree: what an unprivileged process (Postfix, the delivery service) may
    still write; the blocks reserved for root do not count."""
    try:
        stat = statvfs(path)
        return Headroom(purpose, path, stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)
    except Exception as error:  # OSError, or anything odd: never an exception to the caller
        return Headroom(purpose, path, None, None, f"{type(error).__name__}: {error}"[:200])


class HeadroomGuard:
    """The answer to "is any file system short of space?", recomputed at most once per
    `ttl` seconds and shared by every thread of the process.

    Transitions are logged (disk.low / disk.recovered, disk.check_failed / disk.check_ok),
    never every message, so a full disk or a broken mount does not flood the log."""

    def __init__(
        self,
        paths: Mapping[str, str],
        min_free: int,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ):
        self.paths = dict(paths)
        self.min_free = min_free
        self._ttl = ttl
        self._clock = clock
        self._statvfs = statvfs
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._short: Headroom | None = None
        self._low: set[str] = set()
        self._failing: set[str] = set()

    def short(self) -> Headroom | None:
        """The first file system under the threshold (as of at most `ttl` ago), or None."""
        if self.min_free <= 0 or not self.paths:
            return None
        try:
            with self._lock:
                now = self._clock()
                if now - self._at >= self._ttl:
                    headrooms = [measure(p, path, self._statvfs) for p, path in self.paths.items()]
                    self._short = first_short(headrooms, self.min_free)
                    self._at = now
                    self._log_transitions(headrooms)
                return self._short
        except Exception:  # a bug here must not refuse mail either
            log_event("disk.check_failed", logging.WARNING, exc_info=True)
            return None

    def _log_transitions(self, headrooms: list[Headroom]) -> None:
        for headroom in headrooms:
            purpose = headroom.purpose
            if headroom.free_bytes is None:
                if purpose not in self._failing:
                    self._failing.add(purpose)
                    log_event(
                        "disk.check_failed",
                        logging.WARNING,
                        purpose=purpose,
                        path=headroom.path,
                        error=headroom.error,
                        action="accepting mail: free space unknown",
                    )
                continue
            if purpose in self._failing:
                self._failing.discard(purpose)
                log_event("disk.check_ok", purpose=purpose, path=headroom.path)
            short = is_short(headroom, self.min_free)
            if short and purpose not in self._low:
                self._low.add(purpose)
                log_event(
                    "disk.low",
                    logging.WARNING,
                    purpose=purpose,
                    path=headroom.path,
                    free_bytes=headroom.free_bytes,
                    min_free_bytes=self.min_free,
                )
            elif not short and purpose in self._low:
                self._low.discard(purpose)
                log_event(
                    "disk.recovered",
                    purpose=purpose,
                    path=headroom.path,
                    free_bytes=headroom.free_bytes,
                    min_free_bytes=self.min_free,
                )


def postfix_queue_directory(config_dir: str, timeout: float = 20.0) -> str | None:
    """queue_directory of the Postfix instance at ORDERFLOW_POSTFIX_CONFIG_DIR, as Postfix
    resolves it (the devstack's own instance included); None, logged, when postconf fails."""
    binary = shutil.which("postconf") or "/usr/sbin/postconf"
    try:
        result = subprocess.run(
            [binary, "-c", config_dir, "-h", "queue_directory"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        problem = str(error)
    else:
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
        problem = result.stderr.strip()[-200:] or f"exit {result.returncode}"
    log_event(
        "disk.queue_directory_unknown",
        logging.WARNING,
        postfix_config_dir=config_dir,
        error=problem,
        action="checking the spool only",
    )
    return None


def guard_for(settings: Settings, postfix_queue: bool) -> HeadroomGuard:
    """The guard of one program: the milter watches the spool and Postfix's queue (mail it
    accepts needs both), the delivery service only its spool (delivering frees the queue)."""
    paths = {"spool": settings.spool_dir}
    if postfix_queue and settings.min_free_mb > 0:
        queue_dir = postfix_queue_directory(settings.postfix_config_dir)
        if queue_dir is not None:
            paths["postfix_queue"] = queue_dir
    return HeadroomGuard(paths, min_free_bytes(settings.min_free_mb))
