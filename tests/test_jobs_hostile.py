"""Issue 10, items 4, 5, 6 and 8 through the real job: a burst `orderflow-ingest worker` against
the stack's PostgreSQL, Redis and S3.

Every message is stored and enqueued the way the delivery service does it (helpers of
test_jobs_attachments.py), then one burst worker on private queues works them all, with the
document cap lowered to 20 so that item 8 needs no thousand uploads. The worker is given a
deadline: on today's main the hostile winmail.dat holds it for about ten minutes.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mime_builders import JPEG, PDF, b64, message, sha, tnef_blob
from psycopg.rows import dict_row
from redis import Redis
from test_jobs_attachments import VENV_BIN, enqueue, store_message

from orderflow_ingest import documents, messages, storage
from orderflow_ingest.jobs import attachments, context
from orderflow_ingest.jobs.extract import extract_message
from orderflow_ingest.ops import queries
from orderflow_ingest.settings import Settings, load_settings

pytestmark = pytest.mark.stack

RUN = uuid.uuid4().hex[:8]
CAP = 20
OVERRIDES = {
    "ORDERFLOW_ATTACHMENT_QUEUE": f"test-hostile-{RUN}",
    "ORDERFLOW_EXTRACTION_QUEUE": f"test-hostile-extraction-{RUN}",
    "ORDERFLOW_MAX_DOCUMENTS_PER_MESSAGE": str(CAP),
}
WORKER_DEADLINE = 240  # seconds for the whole burst; main's hostile TNEF alone needs ~600


def head(boundary: str = "b", ctype: str = "multipart/mixed") -> tuple[str, ...]:
    return (
        "From: buyer@customer.example",
        "To: orders+acme@orderflow.test",
        "Subject: PO",
        f"Message-ID: <{uuid.uuid4().hex}@customer.example>",
        "MIME-Version: 1.0",
        f'Content-Type: {ctype}; boundary="{boundary}"',
        "",
    )


def pdf_part(disposition: str, data: bytes = PDF) -> tuple[str, ...]:
    return (
        "--b",
        "Content-Type: application/pdf",
        f"Content-Disposition: {disposition}",
        "Content-Transfer-Encoding: base64",
        "",
        b64(data),
    )


# Names that each used to fail every document of their message (or send it back for retries).
HOSTILE_NAMES = {
    "nul_rfc2231": "attachment; filename*=utf-8''Auftrag%00Nr.pdf",
    "surrogate_rfc2047": 'attachment; filename="=?utf-7?q?+2AA-Auftrag.pdf?="',
    "rot13_charset": "attachment; filename*=rot13''Nhsgent.pdf",
    "unicode_escape": "attachment; filename*=unicode_escape''%5Cud800%5Cx00Auftrag.pdf",
    "continuation_digits": "attachment; filename*" + "7" * 5000 + "=Auftrag.pdf",
}


def item4_message() -> bytes:
    lines: list[str] = [*head(), "--b", "Content-Type: text/plain", "", "orders attached"]
    for number, disposition in enumerate(HOSTILE_NAMES.values(), 2):
        lines += pdf_part(disposition, PDF + str(number).encode())
    lines += pdf_part('attachment; filename="good.pdf"')
    lines.append("--b--")
    return message(*lines)


def item5_apple_mail() -> bytes:
    """Apple Mail, plain-text body, a photographed order: inline, Content-ID, no name."""
    return message(
        *head(),
        "--b",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Bestellung anbei",
        "--b",
        "Content-Type: image/jpeg",
        "Content-Disposition: inline",
        "Content-ID: <5E1F0C2A-4711@apple.example>",
        "Content-Location: IMG_4711.jpeg",
        "Content-Transfer-Encoding: base64",
        "",
        b64(JPEG),
        "--b--",
    )


def item5_unknown_subtype() -> bytes:
    return message(
        *head(ctype="multipart/*"),
        "--b",
        "Content-Type: text/plain",
        "",
        "order attached",
        *pdf_part('attachment; filename="po.pdf"'),
        "--b--",
    )


def hostile_tnef() -> bytes:
    """47 bytes: a MAPI property block claiming 2^32-1 properties."""
    props = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHI", 0x0003, 0x3001, 7) * 3
    attribute = struct.pack("<BHHI", 1, 0x9003, 6, len(props)) + props
    attribute += struct.pack("<H", sum(props) & 0xFFFF)
    return struct.pack("<IH", 0x223E9F78, 1) + attribute + b"\0\0"


def winmail_part(blob: bytes) -> tuple[str, ...]:
    return (
        "--b",
        'Content-Type: application/ms-tnef; name="winmail.dat"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(blob),
    )


def item6_message() -> bytes:
    return message(
        *head(),
        "--b",
        "Content-Type: text/plain",
        "",
        "see attachment",
        *winmail_part(hostile_tnef()),
        *pdf_part('attachment; filename="order.pdf"'),
        "--b--",
    )


TNEF_FILES = 45


def item8_message() -> bytes:
    blob = tnef_blob([(f"Position {n:02d}.pdf", PDF + bytes([n])) for n in range(TNEF_FILES)])
    return message(
        *head(),
        *pdf_part('attachment; filename="first.pdf"'),
        *winmail_part(blob),
        *pdf_part('attachment; filename="last.pdf"'),
        "--b--",
    )


MESSAGES = {
    "item4": item4_message,
    "item5_apple": item5_apple_mail,
    "item5_subtype": item5_unknown_subtype,
    "item6": item6_message,
    "item8": item8_message,
}


@pytest.fixture(scope="module")
def hostile_settings(stack: Any) -> Settings:
    return load_settings(str(stack.config_path), environ=OVERRIDES)


@pytest.fixture(scope="module")
def hostile_run(
    stack: Any, hostile_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Store and enqueue every message, then one burst worker over them all."""
    with psycopg.connect(
        hostile_settings.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        s3 = storage.make_client(hostile_settings)
        redis_conn = Redis.from_url(hostile_settings.redis_url)
        raws = {name: build() for name, build in MESSAGES.items()}
        ids = {name: store_message(hostile_settings, conn, s3, raw) for name, raw in raws.items()}
        for message_id in ids.values():
            enqueue(hostile_settings, redis_conn, message_id, conn)
    log = tmp_path_factory.mktemp("hostile") / "worker.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERFLOW_")}
    env.update(OVERRIDES)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("wb") as out:
        done = subprocess.run(
            [
                str(VENV_BIN / "orderflow-ingest"),
                "worker",
                "--config",
                str(stack.config_path),
                "--burst",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=WORKER_DEADLINE,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, log.read_text()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"ids": ids, "raws": raws, "log": log, "cpu": cpu}


def docs(db: Any, message_id: str) -> list[dict[str, Any]]:
    return documents.documents_for_message(db, message_id)


def parts(db: Any, message_id: str) -> dict[str, dict[str, Any]]:
    return {p["part_path"]: p for p in documents.parts_for_message(db, message_id)}


def stored_keys(s3: Any, settings: Settings, db: Any, message_id: str) -> set[str]:
    (row,) = queries.resolve(db, message_id).messages
    prefix = f"documents/{row['org_id']}/{message_id}/"
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
    return {item["Key"] for item in listing.get("Contents", [])}


def events(run: dict[str, Any], name: str, message_id: str) -> list[dict[str, Any]]:
    found = []
    for line in Path(run["log"]).read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("inbound_message_id") == message_id:
                found.append(event)
    return found


def status(db: Any, message_id: str) -> str:
    return queries.statuses_of(db, [message_id])[message_id]


# --- item 4 ---------------------------------------------------------------------------------


def test_item4_bad_filename_does_not_fail_other_documents(
    hostile_run: dict[str, Any], db: Any, s3: Any, hostile_settings: Settings
) -> None:
    message_id = hostile_run["ids"]["item4"]
    assert status(db, message_id) == "PARSED"
    found = {d["part_path"]: d for d in docs(db, message_id)}
    assert sorted(found) == ["1.2", "1.3", "1.4", "1.5", "1.6", "1.7"]
    for number, part in enumerate(sorted(found), 2):
        document = found[part]
        data = PDF if part == "1.7" else PDF + str(number).encode()
        assert document["sha256"] == sha(data), part
        assert document["status"] == "STORED"
        name = document["file_name"]
        assert "\x00" not in name and not any("\ud800" <= ch <= "\udfff" for ch in name)
        original = document["decision_json"]["original_filename"] or ""
        assert "\x00" not in original
        body = s3.get_object(Bucket=hostile_settings.s3_bucket, Key=document["storage_key"])
        assert body["Body"].read() == data
    assert found["1.7"]["file_name"] == "good.pdf"
    assert found["1.4"]["file_name"] == "Nhsgent.pdf"  # rot13 is no charset: read as UTF-8
    assert found["1.6"]["file_name"] == "part-1.6.pdf"  # the absurd continuation is ignored
    assert stored_keys(s3, hostile_settings, db, message_id) == {
        d["storage_key"] for d in found.values()
    }


def test_item4_database_refusal_is_content_failure_of_that_part(
    db: Any, s3: Any, hostile_settings: Settings
) -> None:
    """A name that still reached the database with a NUL (and a type with a lone surrogate):
    those parts are recorded as failed, the third becomes a document, no object is orphaned."""
    raw = message(
        *head(),
        *pdf_part('attachment; filename="one.pdf"', PDF + b"1"),
        *pdf_part('attachment; filename="two.pdf"', PDF + b"2"),
        *pdf_part('attachment; filename="three.pdf"', PDF + b"3"),
        "--b--",
    )
    message_id = store_message(hostile_settings, db, s3, raw)
    job_context = context.JobContext(hostile_settings)
    with psycopg.connect(hostile_settings.database_url, row_factory=dict_row) as conn:
        row = messages.lock_message(conn, message_id)
        assert row is not None
        import io

        with extract_message(io.BytesIO(raw)) as extraction:
            one, two, _three = extraction.documents
            one.filename = "one\x00.pdf"  # as if a decoder had let it through
            two.mime_type = "application/pdf\ud800"
            outcome = attachments._store(job_context, conn, row, extraction, {"test": True})
    assert outcome.status == "parsed"
    assert status(db, message_id) == "PARSED"
    (document,) = docs(db, message_id)
    assert (document["part_path"], document["file_name"]) == ("1.3", "three.pdf")
    recorded = parts(db, message_id)
    for part in ("1.1", "1.2"):
        assert recorded[part]["decision"] == "failed"
        assert "refused by the database" in recorded[part]["reason"]
    assert stored_keys(s3, hostile_settings, db, message_id) == {document["storage_key"]}


# --- item 5 ---------------------------------------------------------------------------------


def test_item5_unreferenced_inline_image_with_content_id_is_document(
    hostile_run: dict[str, Any], db: Any, s3: Any, hostile_settings: Settings
) -> None:
    message_id = hostile_run["ids"]["item5_apple"]
    assert status(db, message_id) == "PARSED"
    (document,) = docs(db, message_id)
    assert document["part_path"] == "1.2"
    assert document["mime_type"] == "image/jpeg"
    assert document["sha256"] == sha(JPEG)
    body = s3.get_object(Bucket=hostile_settings.s3_bucket, Key=document["storage_key"])
    assert body["Body"].read() == JPEG


def test_item5_unknown_multipart_subtype_walked_as_mixed(
    hostile_run: dict[str, Any], db: Any
) -> None:
    message_id = hostile_run["ids"]["item5_subtype"]
    (document,) = docs(db, message_id)
    assert (document["part_path"], document["file_name"]) == ("1.2", "po.pdf")
    assert parts(db, message_id)["1"]["decision"] == "container"


# --- item 6 ---------------------------------------------------------------------------------


def test_item6_hostile_tnef_bounded(
    hostile_run: dict[str, Any], db: Any, s3: Any, hostile_settings: Settings
) -> None:
    message_id = hostile_run["ids"]["item6"]
    assert status(db, message_id) == "PARSED"
    found = {d["file_name"]: d for d in docs(db, message_id)}
    assert set(found) == {"winmail.dat", "order.pdf"}
    winmail = found["winmail.dat"]
    assert winmail["sha256"] == sha(hostile_tnef())
    assert "MAPI property count 4294967295" in winmail["decision_json"]["reason"]
    assert found["order.pdf"]["status"] == "STORED"
    assert events(hostile_run, "attachments.retry", message_id) == []
    # Every message of the run, worker start-up included, in well under a minute of CPU.
    assert hostile_run["cpu"] < 60, hostile_run["cpu"]


# --- item 8 ---------------------------------------------------------------------------------


def test_item8_document_cap(
    hostile_run: dict[str, Any], db: Any, s3: Any, hostile_settings: Settings
) -> None:
    message_id = hostile_run["ids"]["item8"]
    assert status(db, message_id) == "PARSED"
    found = docs(db, message_id)
    assert len(found) == CAP
    paths = sorted((d["part_path"] for d in found), key=lambda p: [int(x) for x in p.split(".")])
    assert paths == ["1.1", *[f"1.2.{n}" for n in range(1, CAP)]]
    recorded = parts(db, message_id)
    over = sorted(p for p, r in recorded.items() if r["decision"] == "skipped")
    assert len(over) == TNEF_FILES - (CAP - 1) + 1  # the rest of winmail.dat, and last.pdf
    assert "1.3" in over
    assert f"over the cap of {CAP} documents per message" in recorded["1.3"]["reason"]
    assert stored_keys(s3, hostile_settings, db, message_id) == {d["storage_key"] for d in found}
    (row,) = queries.resolve(db, message_id).messages
    raw = s3.get_object(Bucket=hostile_settings.s3_bucket, Key=row["raw_storage_key"])
    assert raw["Body"].read() == hostile_run["raws"]["item8"]  # nothing lost: the raw stays
    (warning,) = events(hostile_run, "attachments.document_cap", message_id)
    assert warning["over_cap"] == TNEF_FILES - (CAP - 1) + 1
