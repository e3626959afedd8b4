"""`orderflow-ingest webhook-dispatcher`: the long-running process that delivers webhooks.

One thread fans the event feed out into deliveries; ORDERFLOW_WEBHOOK_CONCURRENCY threads
claim and attempt due deliveries. Any number of dispatchers may run on any hosts: the fan-out
position is locked by one at a time and deliveries are claimed with SKIP LOCKED. SIGTERM stops
claiming and lets attempts in flight finish (each is bounded by ORDERFLOW_WEBHOOK_TIMEOUT);
SIGKILL loses nothing (see delivery.py and fanout.py).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from orderflow_ingest import db, metrics
from orderflow_ingest.logs import log_event, setup_logging
from orderflow_ingest.outcomes import EX_TEMPFAIL
from orderflow_ingest.webhooks import delivery, fanout

# After a database error, wait this long before trying again (and log once per outage).
ERROR_PAUSE_SECONDS = 2.0


class Dispatcher:
    def __init__(self, settings: Any, config: delivery.DeliveryConfig | None = None):
        self.settings = settings
        self.config = config or delivery.DeliveryConfig.from_settings(settings)
        self.concurrency = max(1, int(settings.webhook_concurrency))
        self.poll_interval = max(0.01, float(settings.webhook_poll_interval))
        # At most this many of our threads on one endpoint: a receiver that hangs until the
        # timeout slows its own deliveries, not every other org's.
        self.per_endpoint = max(1, self.concurrency // 2)
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._pool = db.make_pool(settings, self.concurrency + 1, "webhook-dispatcher")

    def run(self) -> None:
        """Until stop(): fan out in this thread, deliver in the worker threads."""
        self._pool.open(wait=True, timeout=self.settings.backend_timeout * 3)
        workers = [
            threading.Thread(target=self._deliver_loop, name=f"webhook-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for worker in workers:
            worker.start()
        try:
            self._loop("fanout", self._fan_out)
        finally:
            self.stopping.set()
            for worker in workers:
                worker.join(timeout=self.config.total_timeout + 5)
            self._pool.close()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def _fan_out(self) -> bool:
        with self._pool.connection() as conn:
            made = fanout.fan_out_all(conn, self.settings.api_base_url)
        if made:
            self._wake.set()
        return made > 0

    def _deliver(self) -> bool:
        with self._pool.connection() as conn:
            # Claims are quick; taking them one at a time keeps the per-endpoint count exact.
            with self._lock:
                busy = [e for e, n in self._in_flight.items() if n >= self.per_endpoint]
                claimed = delivery.claim(conn, self.config, busy)
                if claimed is None:
                    return False
                endpoint = claimed["endpoint_id"]
                self._in_flight[endpoint] += 1
            try:
                result = delivery.attempt(claimed, self.config)
                delivery.record(conn, claimed, result, self.config)
            finally:
                with self._lock:
                    self._in_flight[endpoint] -= 1
                    if self._in_flight[endpoint] <= 0:
                        del self._in_flight[endpoint]
        return True

    def _deliver_loop(self) -> None:
        self._loop("deliver", self._deliver)

    def _loop(self, part: str, step: Callable[[], bool]) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                busy = step()
            except Exception as error:
                if not failing:
                    log_event(
                        "webhook.dispatcher_error",
                        logging.ERROR,
                        part=part,
                        error_type=type(error).__name__,
                        error=str(error)[:300],
                    )
                failing = True
                self.stopping.wait(ERROR_PAUSE_SECONDS)
                continue
            if failing:
                log_event("webhook.dispatcher_recovered", part=part)
                failing = False
            if not busy:
                if part == "deliver":
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                else:
                    self.stopping.wait(self.poll_interval)


def serve(settings: Any) -> int:
    """Run until SIGTERM/SIGINT; the exit status for the CLI."""
    from redis import Redis

    setup_logging(settings.log_level, settings.log_file, component="webhook-dispatcher")
    metrics.configure(
        Redis.from_url(settings.redis_url, socket_timeout=settings.backend_timeout),
        host=settings.metrics_host,
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where is it stuck?
    dispatcher = Dispatcher(settings)
    grace = int(2 * dispatcher.config.total_timeout + 10)

    def stop(signum: int, frame: Any) -> None:
        dispatcher.stop()
        # Attempts in flight get `grace` seconds; then SIGALRM's default action ends the
        # process whatever it waits on. Nothing is lost: a cut attempt is retried (same id).
        signal.alarm(grace)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log_event(
        "webhook.dispatcher_started",
        concurrency=dispatcher.concurrency,
        poll_interval=dispatcher.poll_interval,
    )
    try:
        dispatcher.run()
    except (PoolTimeout, psycopg.OperationalError) as error:
        log_event("webhook.dispatcher_no_database", logging.ERROR, error=str(error)[:300])
        return EX_TEMPFAIL  # systemd starts it again after RestartSec
    finally:
        metrics.shutdown()
    log_event("webhook.dispatcher_stopped")
    return 0
