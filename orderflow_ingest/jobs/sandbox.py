"""Run one function over hostile bytes in a forked child under CPU, memory and time limits.

A parser that loops on a crafted count (tnefparse on a 47-byte winmail.dat) would otherwise hold
the RQ work-horse for as long as it likes, and a parser's own `except Exception` swallows RQ's
job timeout. In a child the limits are the kernel's: RLIMIT_CPU ends it with SIGXCPU (and SIGKILL
a second later), RLIMIT_AS turns a runaway allocation into MemoryError, RLIMIT_FSIZE bounds each
file it writes, and the parent kills it at a wall-clock deadline. The parent only waits on a pipe,
so RQ's timeout (SIGALRM in the parent) still interrupts it; the child is then killed too.

fork, not spawn: a fresh interpreter would cost ~100 ms per call; the child inherits the parsed
modules and touches none of the parent's sockets (it leaves with os._exit, running no cleanup).
The function's result travels back as JSON, so it must be JSON-able.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A child's answer larger than this is not an answer.
MAX_RESULT_BYTES = 32 * 1024 * 1024
_READ = 256 * 1024


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int  # address space the child may add to what it inherits from the parent
    wall_seconds: float
    file_bytes: int | None = None  # largest file the child may write


class LimitExceeded(Exception):
    """The child ran out of CPU, memory, wall-clock time or file size: a content failure."""


class ChildFailed(Exception):
    """The function raised in the child (its type and message, never a traceback)."""


def run_limited(function: Callable[..., Any], args: tuple[Any, ...], limits: Limits) -> Any:
    """`function(*args)` in a child under `limits`; its return value, or an exception."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its outcome is what the parent sees
        os.close(read_fd)
        _child(write_fd, function, args, limits)
    os.close(write_fd)
    deadline = time.monotonic() + limits.wall_seconds
    reaped = False
    try:
        payload = _read_all(read_fd, deadline, pid, limits)
        status = os.waitpid(pid, 0)[1]
        reaped = True
    finally:
        os.close(read_fd)
        if not reaped:
            _kill(pid)
    return _outcome(status, payload, limits)


def _child(
    write_fd: int, function: Callable[..., Any], args: tuple[Any, ...], limits: Limits
) -> None:
    status = 1
    try:
        try:
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU):
                signal.signal(number, signal.SIG_DFL)
            signal.alarm(0)
            logging.disable(logging.CRITICAL)  # inherited handlers write to the parent's log
            _apply(limits)
            payload = json.dumps({"result": function(*args)}).encode()
        except MemoryError:
            payload = b'{"limit": "memory"}'
        except RecursionError:
            payload = b'{"error": "RecursionError"}'
        except BaseException as error:  # reported to the parent: type and message
            payload = json.dumps({"error": f"{type(error).__name__}: {error}"[:300]}).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
        status = 0
    finally:
        os._exit(status)


def _apply(limits: Limits) -> None:
    _lower(resource.RLIMIT_CORE, 0, 0)  # no half-gigabyte core file on SIGXCPU
    _lower(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    budget = _address_space() + limits.memory_bytes
    _lower(resource.RLIMIT_AS, budget, budget)
    if limits.file_bytes is not None:
        _lower(resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes)


def _lower(which: int, soft: int, hard: int) -> None:
    """Set a limit, never above the one inherited (an unprivileged process cannot raise it)."""
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
        hard = min(hard, old_hard)
        soft = min(soft, hard)
    if old_soft != resource.RLIM_INFINITY:
        soft = min(soft, old_soft) if soft != resource.RLIM_INFINITY else old_soft
    resource.setrlimit(which, (soft, hard))


def _address_space() -> int:
    """This process's virtual size now (what a forked child starts with)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _read_all(fd: int, deadline: float, pid: int, limits: Limits) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill(pid)
            raise LimitExceeded(f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, _READ)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_RESULT_BYTES:
            _kill(pid)
            raise LimitExceeded(f"result larger than {MAX_RESULT_BYTES} bytes")
        chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _outcome(status: int, payload: bytes, limits: Limits) -> Any:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number in (signal.SIGXCPU, signal.SIGKILL):
            raise LimitExceeded(f"CPU limit of {limits.cpu_seconds} s exceeded")
        if number == signal.SIGXFSZ:
            raise LimitExceeded(f"file size limit of {limits.file_bytes} bytes exceeded")
        raise ChildFailed(f"killed by signal {signal.Signals(number).name}")
    try:
        answer = json.loads(payload) if payload else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if answer.get("limit") == "memory":
        raise LimitExceeded(f"memory limit of {limits.memory_bytes // (1024 * 1024)} MiB exceeded")
    if "error" in answer:
        raise ChildFailed(str(answer["error"]))
    if "result" not in answer:
        raise ChildFailed(f"child ended without an answer (exit status {status >> 8})")
    return answer["result"]
