"""What a job needs from its process: settings and backend clients, created once per process.

RQ calls the job function by its dotted path in a forked work-horse, with no arguments beyond
the job's own, so the settings come from the file the `worker` command was given (it exports
ORDERFLOW_CONFIG before forking). Clients are made lazily and per pid: a client used in the
worker before a fork would share its sockets with every horse.

The one exception is the S3 client: boto3 needs ~0.5 s of CPU to build one (it loads the
service model), which would be paid by every job, since every job is a new horse. The worker
builds it once before forking and never sends a request with it, so it holds no connection;
each horse inherits an unused copy and opens its own connections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from orderflow_ingest import job_queue, metrics, storage
from orderflow_ingest.settings import Settings, load_settings


@dataclass
class JobContext:
    settings: Settings
    pid: int = field(default_factory=os.getpid)
    _s3: Any = None
    _redis: Any = None
    _s3_unused: bool = False  # built before a fork and never used: safe for a child to take

    def prefork(self) -> JobContext:
        """Build the S3 client now, for the horses to inherit (call only in the worker)."""
        self._s3 = storage.make_client(self.settings)
        self._s3_unused = True
        return self

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = storage.make_client(self.settings)
        if self._s3_unused:
            # From here on this copy has connections of this process's own.
            self._s3_unused = False
        return self._s3

    @property
    def redis(self) -> Any:
        if self._redis is None:
            self._redis = job_queue.make_redis(self.settings)
            metrics.configure(self._redis, flush_interval=None, host=self.settings.metrics_host)
        return self._redis


_context: JobContext | None = None


def configure(settings: Settings) -> JobContext:
    """Use these settings here (the worker command; tests running jobs in-process)."""
    global _context
    _context = JobContext(settings)
    return _context


def get_context() -> JobContext:
    """This process's context, loading settings from ORDERFLOW_CONFIG on first use."""
    global _context
    if _context is None:
        _context = JobContext(load_settings())
    elif _context.pid != os.getpid():
        inherited = _context._s3 if _context._s3_unused else None
        _context = JobContext(_context.settings, _s3=inherited)
    return _context
