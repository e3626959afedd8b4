"""Expand, then contract: the previous release's code keeps working on the new schema.

During a roll-out (ansible/playbook.yml, serial: 1) the first host migrates the shared
database while the other hosts still run the previous release. This test runs that release's
own code, taken from git, against the schema of this checkout: its delivery service stores a
message (written in its own wire format), its worker extracts the attachments, and this
release's code then reads what the old one wrote.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from samples import address, order_email
from support_wait import wait_for

from orderflow_ingest.settings import read_env_file

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
# The commit released as 0.1.0 (CHANGELOG.md). Move it forward at each release.
PREVIOUS_RELEASE = "c7b72b7"


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        if shallow:
            pytest.skip(f"shallow clone: release {PREVIOUS_RELEASE} is not in the history")
        pytest.fail(f"release {PREVIOUS_RELEASE} is not in this repository's history")
    archive = _git("archive", "--format=tar", PREVIOUS_RELEASE, "orderflow_ingest", "sql")
    assert archive.returncode == 0, archive.stderr
    base = Path(str(tmp_path_factory.mktemp("previous-release")))
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(base)  # our own repository's archive
    return base


def _old_python(old_tree: Path, code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env["PYTHONPATH"] = str(old_tree)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=old_tree,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def old_config(stack: Any, old_tree: Path) -> Path:
    """The stack's settings as the previous release knew them (it refuses unknown names)."""
    known = _old_python(
        old_tree,
        "from orderflow_ingest.settings import SETTINGS\n"
        "print('\\n'.join(s.name for s in SETTINGS))",
        timeout=60,
    )
    assert known.returncode == 0, known.stderr
    names = set(known.stdout.split())
    values = {k: v for k, v in read_env_file(str(stack.config_path)).items() if k in names}
    values["ORDERFLOW_DELIVER_SOCKET"] = str(old_tree / "deliver.sock")
    values["ORDERFLOW_SPOOL_DIR"] = str(old_tree)
    values["ORDERFLOW_LOG_FILE"] = str(old_tree / "old.log")
    path = old_tree / "ingest.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def old_service(old_tree: Path, old_config: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env["PYTHONPATH"] = str(old_tree)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orderflow_ingest.entry",
            "deliver-service",
            "--config",
            str(old_config),
        ],
        cwd=old_tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sock_path = old_tree / "deliver.sock"

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"old service exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        return sock_path.exists()

    wait_for(listening, 60, "the previous release's delivery service")
    yield sock_path
    process.terminate()
    process.communicate(timeout=30)


def _deliver_ofi1(sock_path: Path, sender: str, recipient: str, raw: bytes) -> str:
    """The previous release's wire format: length line, NUL-separated envelope, the message."""
    envelope = "\0".join(["OFI1", sender, recipient, "OLDQUEUE1"]).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(str(sock_path))
        conn.sendall(f"{len(envelope)}\n".encode() + envelope + raw)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    return reply.decode()


def test_the_previous_release_delivers_and_extracts_on_the_new_schema(
    stack: Any, db: Any, old_tree: Path, old_config: Path, old_service: Path
) -> None:
    msg = order_email()
    msg.replace_header("Message-ID", f"<upgrade-{uuid.uuid4().hex}@customer.example>")
    reply = _deliver_ofi1(old_service, "buyer@customer.example", address("acme"), msg.as_bytes())
    assert reply.startswith("0 "), reply

    row = db.execute(
        "SELECT id, status, content_sha256 FROM inbound_message WHERE source_message_id = %s",
        (msg["Message-ID"],),
    ).fetchone()
    assert row is not None and row["status"] == "STORED"
    # This release's event log saw the old code's changes (written by the triggers).
    types = [
        r["type"]
        for r in db.execute(
            "SELECT type FROM event WHERE inbound_message_id = %s ORDER BY id", (row["id"],)
        )
    ]
    assert types[:2] == ["message.received", "message.stored"]

    # A second copy through an old host is still a duplicate, never a second row.
    again = _deliver_ofi1(old_service, "buyer@customer.example", address("acme"), msg.as_bytes())
    assert again.startswith("0 "), again
    count = db.execute(
        "SELECT count(*) AS n FROM inbound_message WHERE source_message_id = %s",
        (msg["Message-ID"],),
    ).fetchone()
    assert count["n"] == 1

    # A new host, while old ones still run: the same content is a duplicate of the old row,
    # other content under that Message-ID is a conflict linked to it.
    from test_ingest_e2e import hand_to_delivery_service

    sender, recipient = "buyer@customer.example", address("acme")
    assert hand_to_delivery_service(stack, msg.as_bytes(), sender, recipient) == 0
    other = order_email(message_id=msg["Message-ID"], body="Another order, same Message-ID.\n")
    assert hand_to_delivery_service(stack, other.as_bytes(), sender, recipient) == 0
    rows = db.execute(
        "SELECT id::text AS id, source_message_id, conflict_of::text AS conflict_of"
        " FROM inbound_message WHERE message_id = %s ORDER BY created_at",
        (msg["Message-ID"],),
    ).fetchall()
    assert [(r["id"], r["conflict_of"]) for r in rows] == [
        (str(row["id"]), None),
        (rows[1]["id"], str(row["id"])),
    ]
    assert rows[1]["source_message_id"] is None

    worker = _old_python(
        old_tree,
        "import sys; sys.argv = ['orderflow-ingest', 'worker', '--burst', '--without-scheduler',"
        f" '--config', {str(old_config)!r}]\n"
        "from orderflow_ingest.cli import app\napp()",
        timeout=300,
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    status = db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],)).fetchone()
    assert status["status"] == "PARSED"
    documents = db.execute(
        "SELECT file_name FROM document WHERE inbound_message_id = %s", (row["id"],)
    ).fetchall()
    assert documents

    # And this release reads what the old one wrote.
    from ops_support import cli_json

    code, stories = cli_json(stack, "show", str(row["id"]))
    assert code == 0
    assert stories[0]["inbound_message"]["status"] == "PARSED"
    assert stories[0]["inbound_message"]["message_id"] == msg["Message-ID"]


def test_a_pickled_job_of_the_previous_release_is_failed_unread_and_sweep_requeues_it_as_json(
    stack: Any, db: Any, redis_conn: Any, old_service: Path
) -> None:
    """During the roll-out a 0.1.0 host enqueues with RQ's pickle serializer into the queue the
    new workers read. A new worker never unpickles: it fails the job at once (no retries, no
    traceback storm), and `sweep` re-enqueues the still-STORED message as a JSON job under the
    same job id, which a new worker then runs."""
    from ops_support import cli, cli_json, run_worker

    from orderflow_ingest.job_queue import attachment_job_id, fetch_job

    msg = order_email()
    msg.replace_header("Message-ID", f"<pickled-{uuid.uuid4().hex}@customer.example>")
    reply = _deliver_ofi1(old_service, "buyer@customer.example", address("acme"), msg.as_bytes())
    assert reply.startswith("0 "), reply
    row = db.execute(
        "SELECT id::text AS id, status FROM inbound_message WHERE message_id = %s",
        (msg["Message-ID"],),
    ).fetchone()
    assert row["status"] == "STORED"
    job_id = attachment_job_id(row["id"])
    job_key = f"rq:job:{job_id}"
    assert not _is_json_job(redis_conn.hget(job_key, "data"))  # the old host's pickle

    worked = run_worker(stack)
    job = fetch_job(redis_conn, job_id)
    assert job.get_status() == "failed"
    # Failed for good, not scheduled to fail five more times.
    assert redis_conn.zscore(f"rq:scheduled:{stack.settings.attachment_queue}", job_id) is None
    status = db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],))
    assert status.fetchone()["status"] == "STORED"
    foreign = [
        line
        for line in worked.stderr.splitlines()
        if '"worker.foreign_job"' in line and job_id in line
    ]
    assert foreign, "the worker logs the job it would not read"

    code, report = cli_json(stack, "sweep", "--older-than", "0")
    assert code == 0, report
    (entry,) = [e for e in report["messages"] if e["inbound_message_id"] == row["id"]]
    assert entry["action"] == "reenqueued", entry
    assert _is_json_job(redis_conn.hget(job_key, "data"))
    assert fetch_job(redis_conn, job_id).get_status() == "queued"

    run_worker(stack)
    status = db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],))
    assert status.fetchone()["status"] == "PARSED"
    shown = cli(stack, "show", row["id"])
    assert shown.returncode == 0 and "PARSED" in shown.stdout


def test_a_planted_pickle_never_runs_in_a_new_worker(
    stack: Any, redis_conn: Any, tmp_path: Path
) -> None:
    """Whoever can write to Redis must not run code in a worker: a job whose payload is a
    pickle that would create a file when loaded is failed without being loaded."""
    import pickle
    import zlib

    from ops_support import run_worker

    from orderflow_ingest.job_queue import fetch_job

    marker = tmp_path / "unpickled"

    class Planted:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(marker),))

    job_id = f"planted-{uuid.uuid4().hex}"
    queue_name = stack.settings.attachment_queue
    redis_conn.hset(
        f"rq:job:{job_id}",
        mapping={
            "data": zlib.compress(pickle.dumps(Planted())),
            "origin": queue_name,
            "status": "queued",
            "description": "planted",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "enqueued_at": "2026-01-01T00:00:00.000000Z",
        },
    )
    redis_conn.sadd("rq:queues", f"rq:queue:{queue_name}")
    redis_conn.rpush(f"rq:queue:{queue_name}", job_id)
    run_worker(stack)
    assert not marker.exists()
    assert fetch_job(redis_conn, job_id).get_status() == "failed"


def _is_json_job(data: bytes | None) -> bool:
    import json
    import zlib

    assert data is not None
    try:
        json.loads(zlib.decompress(data))
    except (ValueError, zlib.error):
        return False
    return True


@pytest.mark.parametrize("same_content", [True, False], ids=["same-content", "other-content"])
def test_a_new_hosts_first_copy_waits_for_an_old_hosts_concurrent_insert(
    stack: Any, db: Any, same_content: bool
) -> None:
    """An old host inserts a Message-ID's first copy (0.1.0's statement, which takes no advisory
    lock) and has not committed when a new host's copy arrives: the new insert names the same
    unique index, waits, and then is a duplicate (same content) or a linked conflict."""
    import threading
    from datetime import UTC, datetime

    from orderflow_ingest import db as dbmod
    from orderflow_ingest import messages

    org = db.execute("SELECT id::text AS id FROM org WHERE slug = 'acme'").fetchone()["id"]
    message_id = f"<race-old-new-{uuid.uuid4().hex}@customer.example>"
    url = stack.settings.database_url
    with dbmod.connect(url) as old_host, dbmod.connect(url) as new_host:
        first = old_host.execute(
            "INSERT INTO inbound_message (org_id, source, source_message_id, received_at,"
            " status, sha256, trace_id) VALUES (%s, 'EMAIL', %s, now(), 'RECEIVED', 'aa', 'old')"
            " ON CONFLICT (org_id, source, source_message_id)"
            " WHERE source_message_id IS NOT NULL DO NOTHING RETURNING id::text AS id",
            (org, message_id),
        ).fetchone()
        new = messages.NewMessage(
            org_id=org,
            source_message_id=message_id,
            message_id_synthetic=False,
            from_email=None,
            to_email=None,
            subject=None,
            received_at=datetime.now(UTC),
            sha256="aa" if same_content else "bb",
            size_bytes=1,
            trace_id="new",
            envelope_sender="",
            envelope_recipient="",
            postfix_queue_id=None,
            auth_results=None,
        )
        result: dict[str, Any] = {}
        inserting = threading.Thread(
            target=lambda: result.update(row=messages.insert_received(new_host, new))
        )
        inserting.start()

        def waiting_on_the_index() -> bool:
            return bool(
                db.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO inbound_message%%'"
                ).fetchone()
            )

        wait_for(waiting_on_the_index, 30, "the new host's insert waiting for the old one")
        old_host.commit()
        inserting.join(30)
        assert not inserting.is_alive()
        new_host.commit()
    rows = db.execute(
        "SELECT id::text AS id, conflict_of::text AS conflict_of FROM inbound_message"
        " WHERE message_id = %s ORDER BY created_at, id",
        (message_id,),
    ).fetchall()
    if same_content:
        assert result["row"] is None
        assert [r["id"] for r in rows] == [first["id"]]
    else:
        assert result["row"]["conflict_of"] == first["id"]
        assert [(r["id"], r["conflict_of"]) for r in rows] == [
            (first["id"], None),
            (result["row"]["id"], first["id"]),
        ]


def test_a_new_hosts_json_job_taken_by_an_old_worker_is_retried_and_done_by_a_new_one(
    stack: Any, db: Any, redis_conn: Any, old_tree: Path, old_config: Path
) -> None:
    """The other direction: an old worker cannot read a JSON job (0.1.0 unpickles only). It
    fails the attempt without harm and RQ schedules the retry (0.1.0's backoff, 10 s first),
    which a new worker runs: the message is not lost and does not end FAILED."""
    import time

    from ops_support import cli
    from test_ingest_e2e import hand_to_delivery_service

    from orderflow_ingest.job_queue import attachment_job_id, fetch_job

    msg = order_email()
    assert (
        hand_to_delivery_service(stack, msg.as_bytes(), "b@customer.example", address("acme")) == 0
    )
    row = db.execute(
        "SELECT id::text AS id FROM inbound_message WHERE message_id = %s", (msg["Message-ID"],)
    ).fetchone()
    job_id = attachment_job_id(row["id"])
    old_worker = _old_python(
        old_tree,
        "import sys; sys.argv = ['orderflow-ingest', 'worker', '--burst', '--without-scheduler',"
        f" '--config', {str(old_config)!r}]\n"
        "from orderflow_ingest.cli import app\napp()",
        timeout=300,
    )
    assert old_worker.returncode == 0, old_worker.stderr[-2000:]
    assert fetch_job(redis_conn, job_id).get_status() == "scheduled"
    status = db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],))
    assert status.fetchone()["status"] == "STORED"

    scheduled = f"rq:scheduled:{stack.settings.attachment_queue}"
    wait_for(
        lambda: (redis_conn.zscore(scheduled, job_id) or 0) <= time.time(), 60, "the retry due"
    )
    new_worker = cli(stack, "worker", "--burst", "--with-scheduler", timeout=180)
    assert new_worker.returncode == 0, new_worker.stderr[-2000:]
    wait_for(
        lambda: (
            db.execute("SELECT status FROM inbound_message WHERE id = %s", (row["id"],)).fetchone()[
                "status"
            ]
            == "PARSED"
        ),
        60,
        "PARSED by a new worker",
    )
