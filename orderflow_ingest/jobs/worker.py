"""`orderflow-ingest worker`: RQ's forking Worker on the attachment queue, set up for our jobs.

- Each job runs in a forked work-horse (RQ's default): a job that leaks or crashes takes only
  its horse with it, and a SIGKILLed horse's job is retried (RQ marks it failed and, with
  retries left, schedules it again: `with_scheduler` must be on for the backoff to fire).
- A killed worker's job stays in RQ's StartedJobRegistry until its heartbeat lapses (about
  90 s here) and a maintenance pass retries it. At start-up we do not wait for that when the
  dead worker ran on this host: a worker whose pid is gone is certainly dead, so its jobs are
  re-queued at once (the usual case: systemd restarting a crashed or OOM-killed worker).
  Running a job twice is safe: the job locks its message row and is idempotent.
- Only the holder of the queue's RQ scheduler lock moves due retries back to the queue. A
  restarted worker frees the lock of a scheduler that died on this host, so it takes over at
  once; a shorter worker_ttl makes idle workers on other hosts take over within ~2 minutes.
- RQ's own log lines go through our JSON formatter, one line per event like everything else.
- Nothing of RQ is patched; what is read of its internals here (the started registry's
  composite keys, the intermediate list, the scheduler lock and hash, Worker.execute_job) is
  RQ 3.0's: pyproject bounds rq below 3.1 and tests/test_patch_contracts.py checks each.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.utils import parse_composite_key

from orderflow_ingest import job_queue
from orderflow_ingest.job_queue import is_json_job
from orderflow_ingest.jobs import context
from orderflow_ingest.logs import JsonLineFormatter, log_event, setup_logging
from orderflow_ingest.settings import CONFIG_PATH_VARIABLE, Settings

# How often a worker looks for jobs abandoned by workers on other hosts (RQ's default: 10 min).
MAINTENANCE_INTERVAL = 60
# How often a worker heartbeats its running job; an abandoned job is noticed ~60 s after this.
JOB_MONITORING_INTERVAL = 10
# An idle worker waits worker_ttl - 15 s for a job before its maintenance pass, which is when it
# takes over the scheduler lock of a scheduler that died on another host. RQ's default (420 s)
# let due retries wait ~7 minutes on a quiet queue; 60 s bounds that near two minutes.
WORKER_TTL = 60
# Seconds a job may sit taken-but-not-started before a starting worker calls it abandoned.
INTERMEDIATE_GRACE = 2.0


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

    Two places hold them: RQ's StartedJobRegistry (the worker had started the job) and the
    queue's intermediate list (the worker was killed between taking the job off the queue and
    starting it). Returns the re-queued job ids. Started jobs of workers on other hosts, or of
    live processes, are left to RQ's heartbeat-based cleanup.
    """
    hostname = hostname or socket.gethostname()
    registry = StartedJobRegistry(queue_name, connection=redis)
    rq_queue = job_queue.make_queue(redis, queue_name)
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
        job = _fetch_job(redis, job_id)
        if job is None:  # the job hash is gone: nothing to run, drop the entry
            redis.zrem(registry.key, composite)
            continue
        if not job.retries_left:
            continue  # out of retries: RQ's cleanup moves it to the failed registry
        with redis.pipeline() as pipeline:
            pipeline.zrem(registry.key, composite)
            pipeline.delete(execution.key)
            pipeline.execute()
        _requeue(redis, rq_queue, job, execution.worker_name)
        requeued.append(job_id)
    requeued += _recover_from_intermediate(redis, rq_queue, registry)
    return requeued


def _recover_from_intermediate(
    redis: Redis, rq_queue: Queue, registry: StartedJobRegistry
) -> list[str]:
    """Jobs taken off the queue by a worker that died before starting them.

    A live worker moves a job from the intermediate list into the started registry within
    milliseconds, so one still only in the list after INTERMEDIATE_GRACE seconds was abandoned
    (RQ itself requeues it only after a minute or more, in a maintenance pass). Should a
    slow live worker start it after all, the job runs twice, which is safe: it is idempotent.
    """
    intermediate = IntermediateQueue(rq_queue.key, connection=redis)

    def stuck() -> set[str]:
        return {job_id for job_id in intermediate.get_job_ids() if job_id not in registry}

    candidates = stuck()
    if not candidates:
        return []
    time.sleep(INTERMEDIATE_GRACE)
    requeued = []
    for job_id in sorted(candidates & stuck()):
        job = _fetch_job(redis, job_id)
        if job is None or not job.retries_left:
            continue  # gone, or out of retries: RQ's intermediate-queue cleanup fails it
        # LREM decides between workers starting at the same moment: one removes it.
        if redis.lrem(intermediate.key, 1, job_id):
            _requeue(redis, rq_queue, job, None)
            requeued.append(job_id)
    return requeued


def _fetch_job(redis: Redis, job_id: str) -> Job | None:
    try:
        return job_queue.fetch_job(redis, job_id)
    except Exception:
        return None


def _requeue(redis: Redis, rq_queue: Queue, job: Job, dead_worker: str | None) -> None:
    """Back on the queue, one retry spent: a crash loop must not re-queue a job forever."""
    assert job.retries_left  # callers requeue only jobs with retries left
    with redis.pipeline() as pipeline:
        job.retries_left -= 1
        job.set_status(JobStatus.QUEUED, pipeline=pipeline)
        job.save(pipeline=pipeline)
        pipeline.execute()
    rq_queue.enqueue_job(job)
    log_event(
        "worker.requeued_abandoned",
        logging.WARNING,
        job_id=job.id,
        dead_worker=dead_worker,
        trace_id=job.meta.get("trace_id"),
    )


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


# Compare-and-delete: the lock is removed only if it still names the dead scheduler.
_RELEASE_IF_HELD_BY = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def release_dead_scheduler_lock(
    redis: Redis, queue_name: str, hostname: str | None = None
) -> str | None:
    """Free the queue's RQ scheduler lock when its holder ran on this host and is gone.

    Only the lock holder moves due retries back to the queue, and a SIGKILLed holder's lock
    lives on for 61 s, after which an idle worker takes it over only in a maintenance pass.
    A restarted worker (systemd, after a crash or an OOM kill) would otherwise leave retries
    waiting for minutes. Returns the released scheduler's name, if any.
    """
    hostname = hostname or socket.gethostname()
    key = RQScheduler.get_locking_key(queue_name)
    holder = redis.get(key)
    if not holder:
        return None
    name = _text(holder)
    fields = redis.hmget(SCHEDULER_KEY_TEMPLATE % name, "hostname", "pid")
    host, pid_text = (_text(value) for value in fields)
    pid = int(pid_text) if pid_text.isdigit() else 0
    if host != hostname or pid <= 0 or _pid_alive(pid):
        return None  # elsewhere, unknown or alive: its lock's TTL decides
    if not redis.eval(_RELEASE_IF_HELD_BY, 1, key, holder):
        return None
    return name


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


class JsonJobWorker(Worker):
    """RQ's Worker that fails a job whose payload is not JSON at once, without retries.

    Release 0.1.0 enqueued pickled jobs; while a roll-out runs, old hosts still do, into the
    queue these workers read. Such a job is never unpickled (our serializer is JSON): its horse
    fails to decode it, and with its retries dropped it goes straight to the failed registry
    instead of failing five more times over 20 minutes. Its message stays STORED, so `sweep`
    re-enqueues it as a JSON job under the same id (CHANGELOG 0.2.0, "Upgrade").
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        if not is_json_job(job):
            log_event(
                "worker.foreign_job",
                logging.WARNING,
                job_id=job.id,
                queue=queue.name,
                reason="payload is not JSON (a pickled job of release 0.1.0?): failed unread;"
                " sweep re-enqueues its message",
            )
            job.retries_left = None  # the forked horse inherits this: no retry
        super().execute_job(job, queue)


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
    redis = job_queue.make_redis(settings)
    recovered = recover_abandoned(redis, settings.attachment_queue)
    released = release_dead_scheduler_lock(redis, settings.attachment_queue)
    if released:
        log_event("worker.scheduler_lock_released", scheduler=released)
    worker_kwargs: dict[str, Any] = {
        "connection": redis,
        "name": name or worker_name(),
        "maintenance_interval": MAINTENANCE_INTERVAL,
        "job_monitoring_interval": JOB_MONITORING_INTERVAL,
        "worker_ttl": WORKER_TTL,
        "serializer": job_queue.SERIALIZER,  # JSON, never pickle (see job_queue.py)
    }
    worker = JsonJobWorker(
        [job_queue.make_queue(redis, settings.attachment_queue)], **worker_kwargs
    )
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
