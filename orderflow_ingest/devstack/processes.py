"""Processes and ports of the devstack: start detached, recognise later, stop for sure.

A pid alone is not an identity: after a reboot or a long pause another program may have it.
Each started process is recorded as (pid, start time from /proc), so `dev down` in a later
shell signals only what `dev up` started. Ports are checked the same way: a port that answers
is only "ours" when the listening socket belongs to the process we started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ProcessRef:
    """A process as recorded in stack.json: pid plus kernel start time (clock ticks)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = process_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        """True while this very process runs (not a zombie, not a newer process on the pid)."""
        return process_start_time(self.pid) == self.start_time and not _is_zombie(self.pid)

    def as_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> ProcessRef:
        return cls(int(data["pid"]), int(data["start_time"]))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return text[text.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets are held open until every port is chosen."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def port_is_free(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        sock.close()
    return True


def _listening_inodes(port: int, pid: int | str = "self") -> set[str]:
    """Listening sockets on `port` in the network namespace of process `pid`."""
    inodes: set[str] = set()
    wanted = f":{port:04X}"
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":  # 0A = LISTEN
                inodes.add(fields[9])
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on `port` (checked through /proc)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port, pid)}
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll `check` until true or timeout; stop early (False) when `alive` says the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if alive is not None and not alive():
            return check()
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def in_netns(
    netns: str, argv: Sequence[str], user: str | None = None
) -> tuple[list[str], str | None]:
    """(argv, user for Popen) running `argv` as `user` inside network namespace `netns`.

    Only for test hosts in network namespaces (tests/netns.py); with no netns, unchanged.
    `ip netns exec` needs root, so the switch to `user` is setpriv's, after entering it;
    both exec in place, so the pid is the program's own.
    """
    if not netns:
        return list(argv), user
    prefix = ["ip", "netns", "exec", netns]
    if user:
        prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    return [*prefix, *argv], None


def spawn(
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    user: str | None = None,
    umask: int = 0o027,
    netns: str = "",
) -> tuple[subprocess.Popen[bytes], ProcessRef]:
    """Start a long-running process in its own session, output appended to `log`.

    Its own session: Ctrl-C in the shell that ran `dev up` does not reach it, and stopping it
    can signal its whole process group (RQ's work horses, weed's helpers).
    """
    argv, user = in_netns(netns, argv, user)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            umask=umask,
        )
    ref = ProcessRef.of(process.pid)
    if ref is None:  # exited before we could look: keep a ref that is never alive
        ref = ProcessRef(process.pid, -1)
    return process, ref


def terminate(
    ref: ProcessRef,
    timeout: float,
    popen: subprocess.Popen[bytes] | None = None,
    group: bool = True,
    sig: int = signal.SIGTERM,
) -> None:
    """SIGTERM (to the process group), wait, then SIGKILL; reap it when it is our child."""
    if ref.alive():
        _signal(ref.pid, sig, group)
        if not wait_until(lambda: not ref.alive() or _reaped(popen), timeout, 0.05):
            _signal(ref.pid, signal.SIGKILL, group)
            wait_until(lambda: not ref.alive() or _reaped(popen), 5, 0.05)
    elif group and process_start_time(ref.pid) in (None, ref.start_time):
        # The leader is gone (or a zombie); its group may not be (a worker's work horse).
        # Linux keeps a pid from reuse while it names a live group, so a free pid with members
        # is still ours; a pid another process holds now is not our group: left alone.
        _signal(ref.pid, signal.SIGKILL, True, only_group=True)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=1)


def _reaped(popen: subprocess.Popen[bytes] | None) -> bool:
    return popen is not None and popen.poll() is not None


def _signal(pid: int, sig: int, group: bool, only_group: bool = False) -> None:
    """Signal the process group `pid` leads, or the process alone when it leads none."""
    if group:
        try:
            os.killpg(pid, sig)
            return
        except ProcessLookupError:
            if only_group:
                return
        except PermissionError:
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
