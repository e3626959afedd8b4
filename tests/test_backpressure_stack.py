"""Back-pressure before the disk fills (issue 13, "452 early"), on the real stack.

The stack's Postfix queue and the delivery service's spool each live on a small tmpfs of their
own, mounted here (the tests run as root) and unmounted in teardown whatever happened. Filling
one of them under ORDERFLOW_MIN_FREE_MB makes the milter answer 452 4.3.1 at MAIL FROM, so
nothing is accepted that could then be lost; once space is freed mail flows again and is
STORED. The delivery service defers (75) while its spool is short, and a spool write that hits
ENOSPC stores nothing, so the retry stores the message whole.

Sizes: message_size_limit 4 MiB, queue_minfree 8 MiB (Postfix's own 452 under 8 MiB free),
ORDERFLOW_MIN_FREE_MB 16 (ours, above Postfix's), each tmpfs 48 MiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import LoopbackDns
from milter_harness import make_message
from samples import address
from support_wait import wait_for

from orderflow_ingest.diskspace import MIB

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MIN_FREE_MB = 16
SIZE_LIMIT = 4 * MIB
QUEUE_MINFREE = 8 * MIB
TMPFS_MB = 48
SENDER = "buyer@sender.test"


def _mount_tmpfs(path: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,{options}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


def _unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if result.returncode != 0:  # a file still open under it: detach now, freed when closed
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _is_mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        server.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
        yield server


@pytest.fixture(scope="module")
def tight_stack(request: pytest.FixtureRequest, dns: LoopbackDns) -> Iterator[Any]:
    """A milter stack whose Postfix queue and spool are small tmpfs mounts, mounted before
    the stack first starts (Postfix makes its queue directories on the empty tmpfs)."""
    from orderflow_ingest.devstack.stack import Stack, StackOptions

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    base = Path(tempfile.mkdtemp(prefix="orderflow-stack-", dir="/tmp"))
    base.chmod(0o755)
    spool, queue = base / "spool", base / "postfix" / "queue"
    options = StackOptions(
        milter=True,
        org_slugs=("acme",),
        extra_settings={
            "ORDERFLOW_MIN_FREE_MB": str(MIN_FREE_MB),
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1.5",
        },
        postfix_overrides={
            "message_size_limit": str(SIZE_LIMIT),
            "queue_minfree": str(QUEUE_MINFREE),
        },
    )
    stack = Stack(base, options)
    mounted: list[Path] = []
    try:
        for path in (spool, queue):
            path.mkdir(parents=True)
            _mount_tmpfs(path, "mode=0755")  # the stack sets owner and mode as it starts
            mounted.append(path)
        stack.up()
        assert stack.settings.spool_dir == str(spool)
        assert stack.postfix.queue_dir == queue
        yield stack
    finally:
        with contextlib.suppress(Exception):
            stack.down()
        for path in reversed(mounted):
            _unmount(path)
        still = [path for path in mounted if _is_mountpoint(path)]
        if request.config.getoption("--keep-stack"):
            print(f"\nstack kept in {base}")
        elif not still:
            shutil.rmtree(base, ignore_errors=True)
        assert not still, f"still mounted: {still}"


@contextlib.contextmanager
def filled(directory: Path, leave: int) -> Iterator[Path]:
    """A file that leaves `leave` bytes free on the file system of `directory`; removed
    afterwards, whatever happened."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    assert free > leave, f"{directory}: only {free} bytes free"
    filler = directory / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, free - leave)
        os.close(fd)
        yield filler
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        filler.unlink(missing_ok=True)


def mail_from(stack: Any) -> tuple[int, bytes]:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.sender.test") as s:
        s.ehlo("mail.sender.test")
        reply = s.mail(SENDER)
        s.rset()
        return reply


def order() -> tuple[str, bytes]:
    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    return message_id, make_message(to_addr=address("acme"), message_id=message_id)


def row_of(stack: Any, message_id: str) -> dict[str, Any] | None:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(
        stack.settings.database_url, autocommit=True, row_factory=dict_row, connect_timeout=10
    ) as conn:
        return conn.execute(
            "SELECT id::text AS id, status, sha256, raw_storage_key FROM inbound_message"
            " WHERE source_message_id = %s",
            (message_id,),
        ).fetchone()


def stored(stack: Any, message_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = row_of(stack, message_id)
        return row if row and row["status"] in ("STORED", "PARSED") else None

    return wait_for(check, 60, f"{message_id} STORED")


def raw_object(stack: Any, key: str) -> bytes:
    from orderflow_ingest.storage import make_client

    client = make_client(stack.settings)
    try:
        return client.get_object(Bucket=stack.settings.s3_bucket, Key=key)["Body"].read()
    finally:
        client.close()


def log_events(stack: Any, component: str, event: str) -> list[dict[str, Any]]:
    lines = stack.component_log(component).read_text(errors="replace").splitlines()
    found = [json.loads(line) for line in lines if line.startswith("{")]
    return [entry for entry in found if entry.get("event") == event]


def _refused_at_mail_from(stack: Any) -> tuple[int, bytes] | None:
    reply = mail_from(stack)
    return reply if reply[0] != 250 else None


def _assert_refused_then_flows(stack: Any, directory: Path, purpose: str) -> None:
    message_id, raw = order()
    stack.wait_for_empty_queue(60)  # what earlier tests sent has left Postfix's queue
    with filled(directory, leave=(MIN_FREE_MB - 4) * MIB):
        # Our check is cached for about a second: wait for it to see the filler.
        code, text = wait_for(lambda: _refused_at_mail_from(stack), 10, "452 at MAIL FROM")
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        with (
            pytest.raises(smtplib.SMTPSenderRefused) as refused,
            smtplib.SMTP(stack.smtp_host, stack.smtp_port) as smtp,
        ):
            smtp.sendmail(SENDER, [address("acme")], raw)
        assert refused.value.smtp_code == 452
        assert stack.postqueue() == []  # nothing accepted, so nothing to lose
        assert row_of(stack, message_id) is None
        decisions = log_events(stack, "milter", "milter.mail")
        assert any(
            e["reason"] == "insufficient_storage" and e["purpose"] == purpose for e in decisions
        )
    # Space is back: MAIL FROM is taken again (within the cache's second) and the order flows.
    wait_for(lambda: mail_from(stack)[0] == 250, 10, "MAIL FROM accepted again")
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="mail.sender.test") as s:
        s.sendmail(SENDER, [address("acme")], raw)
    row = stored(stack, message_id)
    assert row["sha256"] == hashlib.sha256(raw_object(stack, row["raw_storage_key"])).hexdigest()


def test_postfix_queue_short_of_space_is_452_at_mail_from_then_mail_flows(
    tight_stack: Any,
) -> None:
    _assert_refused_then_flows(tight_stack, tight_stack.postfix.queue_dir, "postfix_queue")


def test_spool_short_of_space_is_452_at_mail_from_then_mail_flows(tight_stack: Any) -> None:
    _assert_refused_then_flows(tight_stack, Path(tight_stack.settings.spool_dir), "spool")


def test_under_postfix_queue_minfree_postfix_itself_still_says_452(tight_stack: Any) -> None:
    """Below queue_minfree too the sender sees 452 4.3.1, never a 5xx, and nothing of the
    sender's is queued. Postfix's own check fires here, and it tells the postmaster (a
    "resource" notice, notify_classes): the reason our threshold sits above it."""
    queue = tight_stack.postfix.queue_dir
    tight_stack.wait_for_empty_queue(60)
    with filled(queue, leave=QUEUE_MINFREE // 2):
        code, text = wait_for(lambda: _refused_at_mail_from(tight_stack), 10, "452")
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        queued = tight_stack.postqueue()
        assert all(item["sender"] != SENDER for item in queued), queued
    wait_for(lambda: mail_from(tight_stack)[0] == 250, 10, "MAIL FROM accepted again")
    maillog = tight_stack.maillog_path.read_text(errors="replace")
    assert "not enough free space in mail queue" in maillog


# --- the delivery service -----------------------------------------------------------------


def run_client(stack: Any, raw: bytes) -> tuple[int, str]:
    """The real pipe client, as pipe(8) runs it: (exit status, what it printed)."""
    from orderflow_ingest.pipe.build import ensure_built

    result = subprocess.run(
        [
            str(ensure_built()),
            "--config",
            str(stack.config_path),
            "--sender",
            SENDER,
            "--queue-id",
            "BP" + uuid.uuid4().hex[:8].upper(),
            "--",
            address("acme"),
        ],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    return result.returncode, result.stdout.decode(errors="replace")


def test_delivery_service_defers_while_its_spool_is_short(tight_stack: Any) -> None:
    spool = Path(tight_stack.settings.spool_dir)
    with filled(spool, leave=(MIN_FREE_MB - 4) * MIB):
        # Until the service's cached check sees the filler, a delivery may still succeed;
        # each try is a message of its own, and the one deferred is checked below.
        def deferred() -> tuple[str, bytes, str] | None:
            message_id, raw = order()
            status, text = run_client(tight_stack, raw)
            return (message_id, raw, text) if status == 75 else None

        message_id, raw, text = wait_for(deferred, 20, "a delivery deferred with 75")
        assert "insufficient system storage" in text
        assert row_of(tight_stack, message_id) is None  # nothing half-stored
    # Postfix's retry, once there is space again.
    wait_for(lambda: run_client(tight_stack, raw)[0] == 0, 20, "the retry delivered")
    row = stored(tight_stack, message_id)
    assert raw_object(tight_stack, row["raw_storage_key"]) == raw


def test_enospc_mid_write_stores_nothing_and_the_retry_stores_it_whole(tight_stack: Any) -> None:
    """The check passed (or raced), then the spool filled: the write fails with ENOSPC, the
    answer is 75, no row, no object; the retry stores every byte. The service's own handle()
    against the stack's PostgreSQL, S3 and Redis, without a threshold so the write itself
    meets the full disk."""
    from redis import Redis

    from orderflow_ingest import storage
    from orderflow_ingest.db import make_pool
    from orderflow_ingest.pipe.ingest import IN_MEMORY_LIMIT, Backends
    from orderflow_ingest.pipe.protocol import encode
    from orderflow_ingest.pipe.service import NO_SPACE_TEXT, handle

    settings = tight_stack.settings
    pool = make_pool(settings, max_size=2, name="backpressure-test")
    pool.open(wait=True, timeout=30)
    redis_client = Redis.from_url(settings.redis_url)
    backends = Backends(
        settings=settings, pool=pool, s3=storage.make_client(settings), redis=redis_client
    )
    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    # Larger than what the spool keeps in memory, so it goes to disk.
    body = b"".join(b"line %07d of a large order\r\n" % n for n in range(3 * IN_MEMORY_LIMIT // 28))
    raw = make_message(to_addr=address("acme"), message_id=message_id, body=body)
    wire = encode(SENDER, address("acme"), "BPENOSPC", raw)

    def deliver_once() -> bytes:
        ours, theirs = socket.socketpair()
        worker = threading.Thread(target=handle, args=(backends, theirs, 64 * MIB, None))
        worker.start()
        try:
            ours.sendall(wire)
            ours.shutdown(socket.SHUT_WR)
            ours.settimeout(60)
            reply = b""
            while not reply.endswith(b"\n"):
                data = ours.recv(4096)
                if not data:
                    break
                reply += data
            return reply
        finally:
            worker.join(60)
            ours.close()

    try:
        spool = Path(settings.spool_dir)
        with filled(spool, leave=IN_MEMORY_LIMIT):
            assert deliver_once() == f"75 {NO_SPACE_TEXT}\n".encode()
            assert row_of(tight_stack, message_id) is None
            assert not [p for p in spool.iterdir() if p.name.startswith("msg-")]
        assert deliver_once() == b"0 delivered\n"
        row = stored(tight_stack, message_id)
        assert raw_object(tight_stack, row["raw_storage_key"]) == raw
        assert row["sha256"] == hashlib.sha256(raw).hexdigest()
    finally:
        pool.close()
        redis_client.close()
        backends.s3.close()
