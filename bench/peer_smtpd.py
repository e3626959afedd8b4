"""The peer: the design the spec sketches, built by us to measure ourselves against.

An aiosmtpd server that, for each message, inserts the inbound_message row, stores the raw
MIME in S3 and enqueues the RQ job (pooled PostgreSQL connections, one boto3 client, one
Redis connection; the blocking calls in a thread pool) and answers 250 only after all three.
It does the same work per message as our delivery service, with the project's own functions
(header facts, the dedup gate `messages.insert_received`, `storage` keys, `mark_stored`,
`queue.enqueue_extract_attachments`), minus what only a production path needs: no Postfix
queue in front (a backend outage is a 451 to the sender), no event log lines, no metrics.

    .venv/bin/python bench/peer_smtpd.py --config STACK/ingest.env --port 2600

It prints `ready HOST PORT` on stdout once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.controller import Controller

from orderflow_ingest import messages, storage
from orderflow_ingest.addressing import org_slug
from orderflow_ingest.db import make_pool
from orderflow_ingest.job_queue import enqueue_extract_attachments, make_redis
from orderflow_ingest.orgs import org_lifecycle
from orderflow_ingest.pipe.ingest import read_facts, spool
from orderflow_ingest.settings import Settings, load_settings


class Peer:
    """Everything one message needs, shared by the thread pool."""

    def __init__(self, settings: Settings, workers: int):
        self.settings = settings
        self.pool = make_pool(settings, max_size=workers, name="peer")
        self.pool.open(wait=True)
        self.s3 = storage.make_client(settings, max_pool_connections=workers)
        self.redis = make_redis(settings)

    def store(self, sender: str, recipient: str, data: bytes) -> str:
        """Row, S3 object, job; the SMTP reply to give once all three are done."""
        settings = self.settings
        slug = org_slug(recipient, settings.local_part, settings.ingest_domains)
        if slug is None:
            return "550 5.1.1 unknown recipient"
        message = spool(iter([data]), settings)
        try:
            content = read_facts(message, settings)
            facts = content.facts
            trace_id = uuid.uuid4().hex
            with self.pool.connection() as conn:
                org = org_lifecycle(conn, slug)
                if org is None or org["status"] != "active":
                    conn.rollback()
                    return "550 5.1.1 unknown recipient"
                new = messages.NewMessage(
                    org_id=org["id"],
                    source_message_id=facts.message_id,
                    message_id_synthetic=facts.message_id_synthetic,
                    from_email=facts.from_email,
                    to_email=facts.to_email,
                    subject=facts.subject,
                    received_at=datetime.now(UTC),
                    sha256=message.sha256,
                    size_bytes=message.size,
                    trace_id=trace_id,
                    envelope_sender=sender,
                    envelope_recipient=recipient,
                    postfix_queue_id=None,
                    auth_results=content.auth_results,
                    content_sha256=content.content_sha256,
                )
                row = messages.insert_received(conn, new)
                if row is None:  # a duplicate: nothing new to store
                    conn.rollback()
                    return "250 2.0.0 duplicate"
                key = storage.raw_message_key(org["id"], row["id"])
                message.file.seek(0)
                self.s3.put_object(
                    Bucket=settings.s3_bucket,
                    Key=key,
                    Body=message.file,
                    ContentLength=message.size,
                    ContentType="message/rfc822",
                    Metadata={"sha256": message.sha256},
                )
                messages.mark_stored(conn, row["id"], key)
                conn.commit()
            enqueue_extract_attachments(self.redis, settings, row["id"], trace_id, check_live=False)
        finally:
            message.file.close()
        return "250 2.0.0 stored"


class Handler:
    def __init__(self, peer: Peer, executor: ThreadPoolExecutor):
        self.peer = peer
        self.executor = executor

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        loop = asyncio.get_running_loop()
        replies = []
        for recipient in envelope.rcpt_tos:
            try:
                replies.append(
                    await loop.run_in_executor(
                        self.executor,
                        self.peer.store,
                        envelope.mail_from,
                        recipient,
                        envelope.original_content,
                    )
                )
            except Exception as error:  # a backend fault: the sender retries later
                print(f"peer: {type(error).__name__}: {error}", file=sys.stderr)
                return "451 4.3.0 try again later"
        return next((reply for reply in replies if not reply.startswith("250")), replies[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the stack's env file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=8, help="threads and pooled clients")
    args = parser.parse_args()
    settings = load_settings(args.config)
    peer = Peer(settings, args.workers)
    executor = ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="peer")
    controller = Controller(
        Handler(peer, executor),
        hostname=args.host,
        port=args.port,
        data_size_limit=0,  # the bench sends 10 KB messages
        decode_data=False,
    )
    controller.start()
    print(f"ready {args.host} {args.port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    executor.shutdown(wait=True)
    peer.pool.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
