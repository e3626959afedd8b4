"""Issue 10 items 1 and 12 (pipe parts), end to end: the real compiled client and the real
delivery service, on the session stack's PostgreSQL and S3.

A delivery that is not whole (client killed mid-stream, deadline while the connection waited
in the accept backlog, wrong count, wrong hash, missing trailer, garbage) must store nothing
and answer 75; Postfix's complete retry must then be stored whole: one row, the raw in S3
byte-identical to what was sent. The service's wire parser takes only canonical lengths, caps
the message, and gives each connection one deadline, so trickling clients cannot hold slots.

The service under test is a second `orderflow-ingest deliver-service` on the stack's backends
with its own socket, a short ORDERFLOW_DELIVER_TIMEOUT and its own copy of the stack's Postfix
configuration (a smaller message_size_limit), so that it can be paused and starved without
touching the stack's own service.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from samples import address, order_email
from support_wait import wait_for

from orderflow_ingest.ops.doctor import unix_socket_listening
from orderflow_ingest.pipe.build import ensure_built
from orderflow_ingest.pipe.protocol import CHUNK, MESSAGE_MARGIN, VERSION, encode

pytestmark = pytest.mark.stack

DEADLINE = 4.0  # the framing service's ORDERFLOW_DELIVER_TIMEOUT
SIZE_LIMIT = 4_000_000  # message_size_limit of its Postfix configuration copy
MAX_MESSAGE = SIZE_LIMIT + MESSAGE_MARGIN
WORKERS = 2


@dataclass
class FramingService:
    socket: str
    log: Path
    process: subprocess.Popen[bytes]
    config: Path

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if f'"{event}"' in line]

    def incomplete(self, queue_id: str, timeout: float = 30) -> dict[str, Any]:
        """The service's record that it refused the delivery of `queue_id` (waited for)."""

        def find() -> dict[str, Any] | None:
            found = [e for e in self.events("delivery.incomplete") if e.get("queue_id") == queue_id]
            return found[0] if found else None

        return wait_for(find, timeout, f"delivery.incomplete of {queue_id}")


@pytest.fixture(scope="module")
def framing_service(stack: Any) -> Iterator[FramingService]:
    base = Path(tempfile.mkdtemp(prefix="orderflow-framing-", dir="/tmp"))
    postfix_dir = base / "postfix"
    postfix_dir.mkdir()
    for name in ("main.cf", "master.cf"):
        shutil.copy(stack.postfix.config_dir / name, postfix_dir / name)
    main_cf = postfix_dir / "main.cf"
    text, count = re.subn(
        r"(?m)^message_size_limit\s*=.*$", f"message_size_limit = {SIZE_LIMIT}", main_cf.read_text()
    )
    assert count == 1
    main_cf.write_text(text)
    sock, log = base / "deliver.sock", base / "deliver.log"
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "AWS_EC2_METADATA_DISABLED": "true",
        "ORDERFLOW_DELIVER_SOCKET": str(sock),
        "ORDERFLOW_DELIVER_TIMEOUT": str(DEADLINE),
        "ORDERFLOW_DELIVER_WORKERS": str(WORKERS),
        "ORDERFLOW_POSTFIX_CONFIG_DIR": str(postfix_dir),
        "ORDERFLOW_LOG_FILE": str(log),
    }
    script = Path(sys.executable).parent / "orderflow-ingest"
    with open(base / "stderr", "wb") as stderr:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [str(script), "deliver-service", "--config", str(stack.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(
            lambda: process.poll() is not None or unix_socket_listening(str(sock)),
            60,
            "the framing service's socket",
        )
        assert process.poll() is None, (base / "stderr").read_text()
        yield FramingService(str(sock), log, process, stack.config_path)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # in case a test left it paused
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def client_command(service: FramingService, queue_id: str, recipient: str) -> list[str]:
    return [
        str(ensure_built()),
        "--config",
        str(service.config),
        "--sender",
        "buyer@customer.example",
        "--queue-id",
        queue_id,
        "--",
        recipient,
    ]


def client_env(service: FramingService, timeout: float = 60) -> dict[str, str]:
    return {"ORDERFLOW_DELIVER_SOCKET": service.socket, "ORDERFLOW_DELIVER_TIMEOUT": str(timeout)}


def deliver_whole(service: FramingService, raw: bytes, queue_id: str) -> int:
    """Postfix's complete retry: the real client, all of the message, a clean end of input."""
    result = subprocess.run(
        client_command(service, queue_id, address("acme")),
        input=raw,
        capture_output=True,
        env=client_env(service),
        timeout=120,
        check=False,
    )
    assert result.stderr == b""
    return result.returncode


def rows(db: Any, message_id: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT id::text AS id, status, sha256, size_bytes, raw_storage_key"
        " FROM inbound_message WHERE source_message_id = %s",
        (message_id,),
    ).fetchall()


def raw_objects(stack: Any, s3: Any, db: Any) -> set[str]:
    """Keys of every raw message of the org `acme` in S3."""
    org = db.execute("SELECT id::text AS id FROM org WHERE slug = 'acme'").fetchone()["id"]
    keys: set[str] = set()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=stack.settings.s3_bucket, Prefix=f"raw/{org}/"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def assert_no_raw_object_of(
    stack: Any, s3: Any, db: Any, before: set[str], message_id: str
) -> None:
    """No raw object written since `before` holds this message (other raws may appear: Postfix
    retries mail that earlier tests of the session left deferred, through the stack's service)."""
    for key in raw_objects(stack, s3, db) - before:
        body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=key)["Body"].read()
        assert message_id.encode() not in body, key


def assert_stored_whole(stack: Any, s3: Any, db: Any, message_id: str, raw: bytes) -> None:
    """Exactly one row, and its raw in S3 is byte for byte what was sent."""
    (row,) = wait_for(lambda: rows(db, message_id), 30, f"the row of {message_id}")
    assert len(rows(db, message_id)) == 1
    assert row["status"] in ("STORED", "PARSED")
    body = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])["Body"]
    stored = body.read()
    assert stored == raw
    assert row["size_bytes"] == len(raw)


def big_order(size: int) -> tuple[str, bytes]:
    """(Message-ID, raw bytes) of an order whose attachment makes it about `size` bytes."""
    payload = os.urandom(size * 3 // 4)
    msg = order_email(attachments=[("PO.pdf", "application/pdf", b"%PDF-1.4\n" + payload)])
    return msg["Message-ID"], msg.as_bytes()


def wire_delivery(service: FramingService, data: bytes, timeout: float = 30) -> bytes:
    """Write raw bytes to the service's socket as a client would; the service's answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(service.socket)
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the service may answer and close before reading everything
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def envelope(queue_id: str, version: str = VERSION) -> bytes:
    fields = "\0".join((version, "buyer@customer.example", address("acme"), queue_id)).encode()
    return b"%d\n%s" % (len(fields), fields)


def unique_queue_id() -> str:
    return "T" + os.urandom(6).hex().upper()


# --- Item 1: a delivery that is not whole stores nothing; the complete retry is stored whole ---


def test_client_killed_mid_stream_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    message_id, raw = big_order(600_000)
    queue_id = unique_queue_id()
    before = raw_objects(stack, s3, db)
    reader, writer = os.pipe()
    with subprocess.Popen(
        client_command(framing_service, queue_id, address("acme")),
        stdin=reader,
        stdout=subprocess.DEVNULL,
        env=client_env(framing_service),
    ) as client:
        os.close(reader)
        # Returns once the client has read all but what the pipe buffers: it is mid-stream.
        os.write(writer, raw[: len(raw) // 2])
        client.kill()
        client.wait(timeout=30)
    os.close(writer)
    refused = framing_service.incomplete(queue_id)
    assert "without a trailer" in refused["reason"]
    assert 0 < refused["received_bytes"] < len(raw)
    assert rows(db, message_id) == []
    assert_no_raw_object_of(stack, s3, db, before, message_id)
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, message_id, raw)


def test_deadline_during_backlog_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """The service is busy (paused: it accepts nothing) while the client's deadline fires with
    the message half sent into the accept backlog; the service reads that prefix later."""
    message_id, raw = big_order(3_000_000)  # far more than a unix socket buffers
    queue_id = unique_queue_id()
    before = raw_objects(stack, s3, db)
    os.kill(framing_service.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = subprocess.run(
            client_command(framing_service, queue_id, address("acme")),
            input=raw,
            capture_output=True,
            env=client_env(framing_service, timeout=1),
            timeout=60,
            check=False,
        )
        assert result.returncode == 75
        assert result.stdout == b"temporary failure (deadline), try again later\n"
        assert time.monotonic() - started < 30
    finally:
        os.kill(framing_service.process.pid, signal.SIGCONT)
    refused = framing_service.incomplete(queue_id)
    assert 0 < refused["received_bytes"] < len(raw)
    assert rows(db, message_id) == []
    assert_no_raw_object_of(stack, s3, db, before, message_id)
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, message_id, raw)


def test_stdin_ended_early_because_pipe8_died_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """pipe(8) killed while writing: the client sees a clean end of input, but its parent is
    gone, so the input was cut off, not complete. No trailer; nothing stored."""
    message_id, raw = big_order(200_000)
    queue_id = unique_queue_id()
    before = raw_objects(stack, s3, db)
    reader, writer = os.pipe()
    # A stand-in for pipe(8): starts the client on our pipe, then dies at once.
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.Popen(sys.argv[1:], stdin=0,"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
            *client_command(framing_service, queue_id, address("acme")),
        ],
        stdin=reader,
        env=client_env(framing_service),
        timeout=60,
        check=False,
    )
    assert launcher.returncode == 0
    os.close(reader)
    with open(writer, "wb") as stdin:
        stdin.write(raw)  # all of it, then a clean end of file
    refused = framing_service.incomplete(queue_id)
    assert "without a trailer" in refused["reason"]
    assert rows(db, message_id) == []
    assert_no_raw_object_of(stack, s3, db, before, message_id)
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, message_id, raw)


def _refused_on_the_wire(
    service: FramingService, stack: Any, db: Any, s3: Any, wire: bytes, message_id: str
) -> None:
    before = raw_objects(stack, s3, db)
    reply = wire_delivery(service, wire)
    assert reply.startswith(b"75 "), reply
    assert rows(db, message_id) == []
    assert_no_raw_object_of(stack, s3, db, before, message_id)


def test_wrong_count_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    msg = order_email()
    raw, queue_id = msg.as_bytes(), unique_queue_id()
    digest = hashlib.sha256(raw).hexdigest().encode()
    wire = envelope(queue_id) + b"%d\n%s0 %s %d\n" % (len(raw), raw, digest, len(raw) + 1)
    _refused_on_the_wire(framing_service, stack, db, s3, wire, msg["Message-ID"])
    assert "arrived" in framing_service.incomplete(queue_id)["reason"]
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


def test_wrong_hash_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    msg = order_email()
    raw, queue_id = msg.as_bytes(), unique_queue_id()
    other = hashlib.sha256(raw + b"x").hexdigest().encode()
    wire = envelope(queue_id) + b"%d\n%s0 %s %d\n" % (len(raw), raw, other, len(raw))
    _refused_on_the_wire(framing_service, stack, db, s3, wire, msg["Message-ID"])
    assert "sha256" in framing_service.incomplete(queue_id)["reason"]
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


def test_missing_trailer_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    msg = order_email()
    raw, queue_id = msg.as_bytes(), unique_queue_id()
    wire = encode("buyer@customer.example", address("acme"), queue_id, raw)
    without_trailer = wire[: wire.rindex(b"0 ")]
    _refused_on_the_wire(framing_service, stack, db, s3, without_trailer, msg["Message-ID"])
    assert "without a trailer" in framing_service.incomplete(queue_id)["reason"]
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


def test_old_unframed_client_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """An OFI1 client (end of stream = end of message) left over from before an upgrade."""
    msg = order_email()
    raw, queue_id = msg.as_bytes(), unique_queue_id()
    wire = envelope(queue_id, version="OFI1") + raw
    _refused_on_the_wire(framing_service, stack, db, s3, wire, msg["Message-ID"])
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda raw, t: b"%d\n%sjunk\n" % (len(raw), raw), id="garbage-after-chunk"),
        pytest.param(lambda raw, t: b"%d\n%s%s" % (len(raw), raw, t) + b"more", id="after-trailer"),
        pytest.param(lambda raw, t: b"+%d\n%s%s" % (len(raw), raw, t), id="plus-sign"),
        pytest.param(lambda raw, t: b"0%d\n%s%s" % (len(raw), raw, t), id="leading-zero"),
        pytest.param(lambda raw, t: b" %d\n%s%s" % (len(raw), raw, t), id="space"),
        pytest.param(lambda raw, t: b"%d \n%s%s" % (len(raw), raw, t), id="trailing-space"),
        pytest.param(lambda raw, t: b"0x%x\n%s%s" % (len(raw), raw, t), id="hex"),
        pytest.param(lambda raw, t: b"0\n" + t, id="empty-chunk"),
        pytest.param(lambda raw, t: b"%d\n%s" % (CHUNK + 1, raw), id="chunk-over-limit"),
        pytest.param(lambda raw, t: b"9" * 4000 + b"\n", id="endless-length"),
        pytest.param(lambda raw, t: b"\xd9\xa5\n", id="arabic-indic-digit"),
        pytest.param(lambda raw, t: t.upper(), id="upper-case-hash"),
    ],
)
def test_garbage_on_the_wire_stores_nothing_then_the_complete_copy_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any, garbage: Any
) -> None:
    msg = order_email()
    raw, queue_id = msg.as_bytes(), unique_queue_id()
    trailer = b"0 %s %d\n" % (hashlib.sha256(raw).hexdigest().encode(), len(raw))
    if len(raw) > CHUNK:
        pytest.fail("the sample must fit one chunk")
    wire = envelope(queue_id) + garbage(raw, trailer)
    _refused_on_the_wire(framing_service, stack, db, s3, wire, msg["Message-ID"])
    framing_service.incomplete(queue_id)
    assert deliver_whole(framing_service, raw, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


def test_message_holding_text_that_looks_like_framing_is_stored_whole(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """Framing is never read from message bytes: a body with a fake trailer and fake chunk
    lengths, split across chunk boundaries by the real client, arrives whole."""
    msg = order_email()
    head = msg.as_bytes()
    fake = b"0 %s 12\n" % hashlib.sha256(b"").hexdigest().encode()
    raw = head + (b"\n5\nhello\n" + fake + b"0\n") * 20_000  # > 1 MB, many chunk boundaries
    assert deliver_whole(framing_service, raw, unique_queue_id()) == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], raw)


# --- Item 12: the wire parser's bounds --------------------------------------------------------


def test_message_over_the_size_limit_is_refused_with_75_and_logged(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """Larger than message_size_limit plus the margin: Postfix cannot have sent it. 75 (not
    a bounce to a sender we know nothing about), logged, nothing stored."""
    msg = order_email()
    head = msg.as_bytes()
    raw = head + b"x" * (MAX_MESSAGE + 1 - len(head))
    queue_id = unique_queue_id()
    before = raw_objects(stack, s3, db)
    result = subprocess.run(
        client_command(framing_service, queue_id, address("acme")),
        input=raw,
        capture_output=True,
        env=client_env(framing_service),
        timeout=120,
        check=False,
    )
    assert result.returncode == 75
    refused = framing_service.incomplete(queue_id)
    assert "larger than" in refused["reason"]
    assert rows(db, msg["Message-ID"]) == []
    assert_no_raw_object_of(stack, s3, db, before, msg["Message-ID"])
    # At the limit itself it is taken.
    whole = raw[:MAX_MESSAGE]
    assert deliver_whole(framing_service, whole, queue_id + "R") == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], whole)


@dataclass
class Trickler:
    conn: socket.socket
    started: float
    reply: bytes = b""
    sent: int = 0
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        return self.reply.endswith(b"\n")


def test_one_deadline_per_connection_cuts_off_clients_trickling_a_byte_every_200ms(
    framing_service: FramingService, stack: Any, db: Any, s3: Any
) -> None:
    """As many tricklers as the service has workers: each is answered 75 at the connection's
    deadline (a per-read timeout would never fire), and then a real delivery gets a slot."""
    tricklers: list[Trickler] = []
    for _ in range(WORKERS):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(framing_service.socket)
        conn.sendall(envelope(unique_queue_id()) + b"60000\n")
        tricklers.append(Trickler(conn, time.monotonic()))
    limit = time.monotonic() + DEADLINE + 30
    try:
        while not all(t.answered for t in tricklers):
            assert time.monotonic() < limit, "a trickling client was never cut off"
            for trickler in tricklers:
                if trickler.answered:
                    continue
                try:
                    trickler.conn.send(b"x")
                    trickler.sent += 1
                except OSError:
                    pass  # the service closed its side: its answer is there to read
            readable, _, _ = select.select([t.conn for t in tricklers], [], [], 0.2)
            for trickler in tricklers:
                if trickler.conn in readable and not trickler.answered:
                    chunk = trickler.conn.recv(4096)
                    trickler.reply += chunk if chunk else b"\n(closed without an answer)\n"
                    if trickler.answered:
                        trickler.seconds = time.monotonic() - trickler.started
    finally:
        for trickler in tricklers:
            trickler.conn.close()
    for trickler in tricklers:
        assert trickler.reply.startswith(b"75 "), trickler.reply
        assert DEADLINE - 0.5 <= trickler.seconds < DEADLINE + 10
        assert trickler.sent >= 10  # it did keep sending, one byte each 0.2 s
    msg = order_email()
    assert deliver_whole(framing_service, msg.as_bytes(), unique_queue_id()) == 0
    assert_stored_whole(stack, s3, db, msg["Message-ID"], msg.as_bytes())
