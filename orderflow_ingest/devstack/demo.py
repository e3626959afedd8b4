"""`make demo`: one real order email with a PDF through Postfix, and what comes out of it.

Starts the throwaway stack (or reuses a running one), sends the email over SMTP to the stack's
Postfix, then prints the inbound_message row, the raw object in S3, the queued RQ job and, once
a burst worker has run, the documents and their hand-off jobs. The stack keeps running so you
can look around; `orderflow-ingest dev down` stops it.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from orderflow_ingest.db import connect
from orderflow_ingest.devstack import demo_product
from orderflow_ingest.devstack.stack import Stack, StackOptions
from orderflow_ingest.job_queue import attachment_job_id, fetch_job, make_redis
from orderflow_ingest.storage import make_client

DEMO_DOMAIN = "orderflow.test"


def minimal_pdf(line: str = "Purchase order PO-4711: 12 x widget") -> bytes:
    """A small, valid one-page PDF with one line of text (the demo's order; tests use it too)."""
    text = f"BT /F1 14 Tf 72 720 Td ({line}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def order_email(recipient: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Purchasing <purchasing@customer.example>"
    msg["To"] = recipient
    msg["Subject"] = "Purchase order PO-4711"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="customer.example")
    msg.set_content("Hello,\n\nplease find our purchase order PO-4711 attached.\n")
    msg.add_attachment(minimal_pdf(), maintype="application", subtype="pdf", filename="PO-4711.pdf")
    return msg


def heading(text: str) -> None:
    print(f"\n== {text}")


def show(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))


def wait_for_row(settings: Any, message_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    with connect(settings.database_url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT id::text AS id, org_id::text AS org_id, source, source_message_id,"
                " from_email::text AS from_email, subject, status, raw_storage_key, sha256,"
                " size_bytes, trace_id, postfix_queue_id, auth_results, received_at"
                " FROM inbound_message WHERE source_message_id = %s",
                (message_id,),
            ).fetchone()
            conn.rollback()
            if row and row["status"] in statuses:
                return row
            time.sleep(0.2)
    raise SystemExit(f"demo: no {'/'.join(statuses)} row for {message_id} after 60 s")


def main() -> int:
    base_dir = Path(os.environ.get("ORDERFLOW_DEV_DIR", ".devstack")).resolve()
    heading(f"starting the local stack in {base_dir}")
    stack = Stack(base_dir, StackOptions(ingest_domain=DEMO_DOMAIN, milter=True)).up()
    recipient = f"orders+acme@{DEMO_DOMAIN}"
    msg = order_email(recipient)
    logs = base_dir / "logs"
    heading("an API key and a webhook endpoint for org acme; the API and the dispatcher")
    product = demo_product.start(stack, "acme", logs)
    try:
        return _run(stack, base_dir, msg, recipient, product)
    finally:
        product.stop()


def _run(stack: Stack, base_dir: Path, msg: EmailMessage, recipient: str, product: Any) -> int:
    settings = stack.settings

    heading(
        f"sending {msg['Subject']!r} with PO-4711.pdf to {recipient} via SMTP "
        f"{stack.smtp_host}:{stack.smtp_port}"
    )
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="purchasing@customer.example", to_addrs=[recipient])
    print("Postfix answered 250: the message is on Postfix's disk")

    row = wait_for_row(settings, msg["Message-ID"], ("STORED", "PARSED"))
    heading("inbound_message row")
    show(row)

    heading("raw MIME in S3")
    s3 = make_client(settings)
    raw = s3.get_object(Bucket=settings.s3_bucket, Key=row["raw_storage_key"])["Body"].read()
    print(f"s3://{settings.s3_bucket}/{row['raw_storage_key']}  ({len(raw)} bytes)")
    stamped = BytesHeaderParser().parsebytes(raw).get_all("Authentication-Results") or []
    for header in stamped:
        print("Authentication-Results: " + " ".join(str(header).split()))

    heading("queued RQ job")
    redis = make_redis(settings)
    job = fetch_job(redis, attachment_job_id(row["id"]))
    status = job.get_status()
    print(f"{job.id}: {job.func_name}{job.args}  queue={job.origin}  status={status.value}")

    worker_log = base_dir / "logs" / "demo-worker.log"
    heading(f"running one burst worker to extract the attachments (log: {worker_log})")
    worker = [sys.executable, "-m", "orderflow_ingest.entry", "worker", "--burst"]
    with worker_log.open("ab") as log:
        subprocess.run(
            [*worker, "--config", str(stack.config_path)], check=False, stdout=log, stderr=log
        )
    parsed = wait_for_row(settings, msg["Message-ID"], ("PARSED", "FAILED"))
    with connect(settings.database_url) as conn:
        documents = conn.execute(
            "SELECT id::text AS id, part_path, file_name, mime_type, size_bytes, sha256,"
            " storage_key FROM document WHERE inbound_message_id = %s ORDER BY part_path",
            (row["id"],),
        ).fetchall()
    print(f"inbound_message {parsed['id']} is {parsed['status']}")
    for document in documents:
        show(document)
    heading("hand-off to the extraction pipeline")
    for document in documents:
        extract = fetch_job(redis, f"extract-document-{document['id']}")
        print(f"{extract.id}: {extract.func_name}{extract.args}  queue={extract.origin}")

    demo_product.show(product, parsed, heading)

    heading("the stack is still running (the demo's API and dispatcher stop now)")
    print(f'  eval "$({sys.prefix}/bin/orderflow-ingest dev env --dir {base_dir})"')
    print(f"  {sys.prefix}/bin/orderflow-ingest dev down --dir {base_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
