"""What a worker restarted after a SIGKILL (systemd, after an OOM kill or a crash) picks up
from its dead predecessor at once, rather than minutes later in RQ's maintenance passes.

- A job the dead worker had taken off the queue but not started yet sits in the queue's
  intermediate list; RQ requeues it only after a minute or more.
- Only the holder of the queue's scheduler lock moves due retries back to the queue. A holder
  that was SIGKILLed leaves its lock for 61 s, and an idle worker took it over only in a later
  maintenance pass: retries stalled for minutes when mail was quiet
  (tests/reliability/test_rel_2b_scheduler.py).

Real Redis, real worker process.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import send_mail
from ops_support import cli, wait_status
from redis import Redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from samples import address, order_email

from orderflow_ingest.job_queue import attachment_job_id
from orderflow_ingest.jobs.worker import release_dead_scheduler_lock

pytestmark = pytest.mark.stack


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def hold_lock(redis: Redis, queue_name: str, hostname: str, pid: int | None) -> str:
    """What a scheduler leaves behind: its lock and its registration hash."""
    name = uuid.uuid4().hex
    redis.set(RQScheduler.get_locking_key(queue_name), name, ex=61)
    if pid is not None:
        redis.hset(f"rq:scheduler:{name}", mapping={"hostname": hostname, "pid": pid})
        redis.expire(f"rq:scheduler:{name}", 61)
    return name


@pytest.mark.parametrize(
    ("host", "pid", "released"),
    [
        ("this", "dead", True),
        ("this", "alive", False),  # a live scheduler keeps its lock
        ("other", "dead", False),  # another host's pids mean nothing here: its TTL decides
        ("this", None, False),  # no registration: nothing to judge by
    ],
)
def test_only_a_dead_local_schedulers_lock_is_released(
    redis_conn: Redis, host: str, pid: str | None, released: bool
) -> None:
    queue_name = f"lock-test-{uuid.uuid4().hex[:8]}"
    hostname = socket.gethostname() if host == "this" else "mx9.elsewhere.example"
    pids = {"dead": dead_pid(), "alive": 1, None: None}
    name = hold_lock(redis_conn, queue_name, hostname, pids[pid])
    key = RQScheduler.get_locking_key(queue_name)
    try:
        result = release_dead_scheduler_lock(redis_conn, queue_name)
        assert (result == name) is released
        assert (redis_conn.get(key) is None) is released
    finally:
        redis_conn.delete(key, f"rq:scheduler:{name}")


def test_a_due_retry_runs_when_the_worker_restarts_after_its_scheduler_died(
    stack: Any, db: Any, redis_conn: Redis
) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    row = wait_status(db, msg["Message-ID"], ("STORED",))
    queue_name = stack.settings.attachment_queue
    # The job waits for its retry (as after a failed attempt), due now ...
    job = Job.fetch(attachment_job_id(row["id"]), connection=redis_conn)
    Queue(queue_name, connection=redis_conn).remove(job)
    ScheduledJobRegistry(queue_name, connection=redis_conn).schedule(job, datetime.now(UTC))
    # ... and the scheduler that would move it back to the queue was killed on this host.
    hold_lock(redis_conn, queue_name, socket.gethostname(), dead_pid())
    result = cli(stack, "worker", "--burst")
    assert result.returncode == 0, result.stderr[-2000:]
    wait_status(db, msg["Message-ID"], ("PARSED",), timeout=30)


def test_a_job_taken_but_not_started_by_a_dead_worker_runs_when_a_worker_starts(
    stack: Any, db: Any, redis_conn: Redis
) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme")])
    row = wait_status(db, msg["Message-ID"], ("STORED",))
    rq_queue = Queue(stack.settings.attachment_queue, connection=redis_conn)
    job_id = attachment_job_id(row["id"])
    # Where RQ's dequeue puts a job before the worker starts it, and where a SIGKILL leaves it.
    assert redis_conn.lrem(rq_queue.key, 1, job_id) == 1
    redis_conn.rpush(IntermediateQueue.get_intermediate_queue_key(rq_queue.key), job_id)
    result = cli(stack, "worker", "--burst")
    assert result.returncode == 0, result.stderr[-2000:]
    wait_status(db, msg["Message-ID"], ("PARSED",), timeout=30)
    assert job_id not in IntermediateQueue(rq_queue.key, connection=redis_conn).get_job_ids()
