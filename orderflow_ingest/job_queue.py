"""RQ queues and the jobs we enqueue, with deterministic job ids.

Enqueuing by dotted path keeps the pipe from importing the jobs package (and the jobs from
importing the downstream extraction code): each side only names the other.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from orderflow_ingest.settings import Settings

# Jobs are JSON in Redis, never pickle: whoever can write to Redis must not be able to run
# code in a worker by planting a job. Every Queue, Worker and Job.fetch names this serializer
# (the downstream extraction worker too: `rq worker -S rq.serializers.JSONSerializer`).
SERIALIZER = JSONSerializer
EXTRACT_ATTACHMENTS = "orderflow_ingest.jobs.attachments.extract_attachments"
# An infrastructure fault inside a job is retried with backoff; content faults end FAILED.
ATTACHMENT_RETRY = Retry(max=5, interval=[10, 30, 60, 300, 900])
LIVE_STATES = (
    JobStatus.QUEUED,
    JobStatus.STARTED,
    JobStatus.DEFERRED,
    JobStatus.SCHEDULED,
)


def make_redis(settings: Settings) -> Redis:
    timeout = settings.backend_timeout
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


def make_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=SERIALIZER)


def fetch_job(redis: Redis, job_id: str) -> Job:
    """Job.fetch with our serializer; raises NoSuchJobError like Job.fetch."""
    return Job.fetch(job_id, connection=redis, serializer=SERIALIZER)


def is_json_job(job: Job) -> bool:
    """True when the job's payload is JSON, i.e. ours. Reads the bytes as JSON only: a pickled
    job (a 0.1.0 host during a roll-out, or one planted in Redis) is never unpickled."""
    try:
        json.loads(job.data)
    except (ValueError, TypeError):
        return False
    return True


def attachment_job_id(inbound_message_id: str) -> str:
    return f"extract-attachments-{inbound_message_id}"


def document_job_id(document_id: str) -> str:
    return f"extract-document-{document_id}"


def job_is_live(redis: Redis, job_id: str) -> bool:
    """True when the job exists and is waiting or running (no need to enqueue it again)."""
    try:
        job = fetch_job(redis, job_id)
    except Exception:  # rq raises NoSuchJobError, or a decode error on a foreign hash
        return False
    return job.get_status(refresh=False) in LIVE_STATES


def enqueue_unless_live(
    queue: Queue, func: str, job_id: str, *args: Any, check_live: bool = True, **options: Any
) -> bool:
    """Enqueue with a fixed id unless that job is already waiting or running.

    Returns whether it enqueued. Re-running a finished or failed job is allowed: the jobs are
    idempotent, so this is how a retried delivery or a `reprocess` gets work done again.
    `check_live=False` skips the look-up when the caller knows the job cannot exist yet.
    """
    if check_live and job_is_live(queue.connection, job_id):
        return False
    queue.enqueue(func, *args, job_id=job_id, **options)
    return True


def enqueue_extract_attachments(
    redis: Redis,
    settings: Settings,
    inbound_message_id: str,
    trace_id: str,
    check_live: bool = True,
    pipeline: Any = None,
) -> bool:
    """With `pipeline` (a transaction of `redis`), the job's commands are queued on it and
    the caller's `pipeline.execute()` sends them in one round trip (RQ alone sends two)."""
    queue = make_queue(redis, settings.attachment_queue)
    return enqueue_unless_live(
        queue,
        EXTRACT_ATTACHMENTS,
        attachment_job_id(inbound_message_id),
        inbound_message_id,
        check_live=check_live,
        pipeline=pipeline,
        trace_id=trace_id,
        job_timeout=settings.job_timeout,
        retry=ATTACHMENT_RETRY,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        meta={"trace_id": trace_id},
    )


def enqueue_extract_document(
    redis: Redis, settings: Settings, document_id: str, org_id: str, trace_id: str
) -> bool:
    """Hand a document to the downstream extraction pipeline (spec 009), once."""
    queue = make_queue(redis, settings.extraction_queue)
    return enqueue_unless_live(
        queue,
        settings.extraction_function,
        document_job_id(document_id),
        document_id,
        org_id,
        meta={"trace_id": trace_id},
        result_ttl=86400,
        failure_ttl=7 * 86400,
    )
