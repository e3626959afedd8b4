"""Stopping the devstack's processes (devstack/processes.py) with real processes: a group
whose leader died is still stopped, and a pid that now belongs to someone else is left alone."""

from __future__ import annotations

import os
import subprocess
import time

from support_wait import wait_for

from orderflow_ingest.devstack.processes import ProcessRef, process_start_time, terminate


def _gone(pid: int) -> bool:
    fields = None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def test_a_group_whose_leader_died_is_still_stopped() -> None:
    """A worker killed by a test leaves its work horse running in its process group."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; read line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None and leader.stdin is not None
    horse = int(leader.stdout.readline())
    ref = ProcessRef.of(leader.pid)
    assert ref is not None
    leader.stdin.close()  # the leader exits; its child stays in the group
    wait_for(lambda: not ref.alive(), 10, "the leader to exit")
    assert not _gone(horse)
    terminate(ref, 5, leader)
    wait_for(lambda: _gone(horse), 10, "the orphaned group member to be killed")
    assert leader.returncode is not None  # reaped, no zombie left behind
    leader.stdout.close()


def test_a_pid_now_held_by_another_process_is_left_alone() -> None:
    """A stale record (the pid was reused) must not kill whatever holds that pid now."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start = process_start_time(stranger.pid)
        assert start is not None
        stale = ProcessRef(stranger.pid, start + 12345)  # same pid, another process
        terminate(stale, 1)
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that is not ours was signalled"
        assert os.getpgid(stranger.pid) == stranger.pid
    finally:
        stranger.kill()
        stranger.wait()
