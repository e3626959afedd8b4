"""`orderflow-ingest worker`: RQ's forking Worker on the attachment queue, set up for our jobs.

- Each job runs in a forked work-horse (RQ's default): a job that leaks or crashes takes only
  its horse with it, and a SIGKILLed horse's job is retried (RQ marks it failed and, with
  retries left, schedules it again: `with_scheduler` must be on for the backoff to fire).
- A killed worker's job stays in RQ's StartedJobRegistry until its heartbeat lapses (about
  90 s here) and a maintenance pass retries it. At start-up we do not wait for that when the
  dead worker ran on this host: a worker whose pid is gone is certainly dead, so its jobs are
  re-queued at once (the usual case: systemd restarting a crashed or OOM-killed worker).
  Running a job twice is safe: the job locks its message row and is idempotent.
- RQ's own log lines go through our JSON formatter, one line per event like everything else.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import parse_composite_key

from orderflow_ingest import queue
from orderflow_ingest.jobs import context
from orderflow_ingest.logs import JsonLineFormatter, log_event, setup_logging
from orderflow_ingest.settings import CONFIG_PATH_VARIABLE, Settings

# How often a worker looks for jobs abandoned by workers on other hosts (RQ's default: 10 min).
MAINTENANCE_INTERVAL = 60
# How often a worker heartbeats its running job; an abandoned job is noticed ~60 s after this.
JOB_MONITORING_INTERVAL = 10


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_abandoned(redis: Redis, queue_name: str, hostname: str | None = None) -> list[str]:
    """Re-queue jobs whose worker ran on this host and whose process is gone.

    Returns the re-queued job ids. Jobs of workers on other hosts, or of live processes, are
    left to RQ's heartbeat-based cleanup.
    """
    hostname = hostname or socket.gethostname()
    registry = StartedJobRegistry(queue_name, connection=redis)
    rq_queue = Queue(queue_name, connection=redis)
    requeued: list[str] = []
    for entry in redis.zrange(registry.key, 0, -1):
        composite = entry.decode() if isinstance(entry, bytes) else str(entry)
        try:
            job_id, execution_id = parse_composite_key(composite)
            execution = Execution.fetch(execution_id, job_id, connection=redis)
        except Exception:  # the execution hash expired: RQ's cleanup will handle the entry
            continue
        worker = Worker.find_by_key(
            Worker.redis_worker_namespace_prefix + execution.worker_name, connection=redis
        )
        if worker is not None and (
            worker.hostname != hostname
            or (worker.pid != os.getpid() and _pid_alive(worker.pid or 0))
        ):
            continue
        if worker is None and not _same_host_worker_name(execution.worker_name, hostname):
            continue
        try:
            job = Job.fetch(job_id, connection=redis)
        except Exception:
            redis.zrem(registry.key, composite)
            continue
        if not job.retries_left:
            continue  # out of retries: RQ's cleanup moves it to the failed registry
        with redis.pipeline() as pipeline:
            pipeline.zrem(registry.key, composite)
            pipeline.delete(execution.key)
            job.retries_left -= 1  # a crash loop must not re-queue a job forever
            job.set_status(JobStatus.QUEUED, pipeline=pipeline)
            job.save(pipeline=pipeline)
            pipeline.execute()
        rq_queue.enqueue_job(job)
        requeued.append(job_id)
        log_event(
            "worker.requeued_abandoned",
            logging.WARNING,
            job_id=job_id,
            dead_worker=execution.worker_name,
            trace_id=job.meta.get("trace_id"),
        )
    return requeued


def _same_host_worker_name(name: str, hostname: str) -> bool:
    """Our worker names start with the host name (see `worker_name`)."""
    return name.startswith(f"orderflow-{hostname}-")


def worker_name(hostname: str | None = None) -> str:
    """Says which host and pid; unique even when a container restarts with the same pid."""
    return f"orderflow-{hostname or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def route_rq_logs(level: str) -> None:
    """RQ logs through `rq.*` loggers; give them our JSON line formatter."""
    rq_logger = logging.getLogger("rq")
    rq_logger.handlers[:] = list(logging.getLogger("orderflow").handlers)
    for handler in rq_logger.handlers:
        if not isinstance(handler.formatter, JsonLineFormatter):
            handler.setFormatter(JsonLineFormatter())
    rq_logger.setLevel(level)
    rq_logger.propagate = False


def run_worker(
    settings: Settings,
    burst: bool = False,
    name: str | None = None,
    with_scheduler: bool = True,
    max_jobs: int | None = None,
) -> bool:
    """Work the attachment queue until stopped (or, with burst, until it is empty)."""
    setup_logging(settings.log_level, settings.log_file, component="worker")
    route_rq_logs(settings.log_level)
    if settings.source:
        # The horses load settings from here if they ever need to (context.get_context).
        os.environ[CONFIG_PATH_VARIABLE] = settings.source
    # Imported and built here, once: every job runs in a fresh fork of this process.
    from orderflow_ingest.jobs import attachments  # noqa: F401

    context.configure(settings).prefork()
    redis = queue.make_redis(settings)
    recovered = recover_abandoned(redis, settings.attachment_queue)
    worker_kwargs: dict[str, Any] = {
        "connection": redis,
        "name": name or worker_name(),
        "maintenance_interval": MAINTENANCE_INTERVAL,
        "job_monitoring_interval": JOB_MONITORING_INTERVAL,
    }
    worker = Worker([Queue(settings.attachment_queue, connection=redis)], **worker_kwargs)
    log_event(
        "worker.started",
        worker=worker.name,
        queue=settings.attachment_queue,
        burst=burst,
        recovered_jobs=recovered,
    )
    worked = worker.work(
        burst=burst,
        with_scheduler=with_scheduler,
        logging_level=settings.log_level,
        max_jobs=max_jobs,
    )
    log_event("worker.stopped", worker=worker.name, worked=worked)
    return bool(worked)
