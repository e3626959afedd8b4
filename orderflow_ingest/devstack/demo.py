"""`make demo`: one real order email with a PDF through Postfix, and what comes out of it.

Starts the whole throwaway system (what `orderflow-ingest dev up` starts: Postfix with the
milter, the delivery service, one worker, the API with the web inbox), or reuses a running one,
sends the email over SMTP to the stack's Postfix, then prints the inbound_message row, the raw
object in S3, the RQ job and, once the worker has run it, the documents and their hand-off
jobs, the API's view and the webhooks. Last it signs in a demo user (admin of acme): the web
inbox's URL and a fresh sign-in link. The stack keeps running, the inbox with it, until
`orderflow-ingest dev down`.
"""

from __future__ import annotations

import json
import os
import smtplib
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from orderflow_ingest import documents, messages, orgs
from orderflow_ingest.db import connect
from orderflow_ingest.devstack import demo_product
from orderflow_ingest.devstack.stack import Stack, StackOptions
from orderflow_ingest.job_queue import attachment_job_id, document_job_id, fetch_job, make_redis
from orderflow_ingest.storage import make_client

DEMO_DOMAIN = "orderflow.test"
DEMO_ORG = "acme"
DEMO_USER = "demo@acme.example"
DEMO_PDF = "PO-4711.pdf"
ROW_FIELDS = (
    "id", "org_id", "source", "source_message_id", "from_email", "subject", "status",
    "raw_storage_key", "sha256", "size_bytes", "trace_id", "postfix_queue_id", "auth_results",
    "received_at",
)  # fmt: skip
DOCUMENT_FIELDS = ("id", "part_path", "file_name", "mime_type", "size_bytes", "sha256")


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
    msg.add_attachment(minimal_pdf(), maintype="application", subtype="pdf", filename=DEMO_PDF)
    return msg


def heading(text: str) -> None:
    print(f"\n== {text}")


def show(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))


def pick(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in names}


def wait_for_row(
    settings: Any, slug: str, message_id: str, statuses: tuple[str, ...], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with connect(settings.database_url) as conn:
        org = orgs.org_by_slug(conn, slug)
        if org is None:
            raise SystemExit(f"demo: no org {slug}")
        while time.monotonic() < deadline:
            row = messages.find_by_message_id(conn, str(org["id"]), message_id)
            conn.rollback()
            if row and row["status"] in statuses:
                return row
            time.sleep(0.2)
    raise SystemExit(f"demo: no {'/'.join(statuses)} row for {message_id} after {timeout:.0f} s")


def main() -> int:
    base_dir = Path(os.environ.get("ORDERFLOW_DEV_DIR", ".devstack")).resolve()
    heading(f"starting the local stack in {base_dir}")
    stack = Stack(base_dir, StackOptions.whole_system(ingest_domain=DEMO_DOMAIN)).up()
    recipient = f"orders+{DEMO_ORG}@{DEMO_DOMAIN}"
    msg = order_email(recipient)
    logs = base_dir / "logs"
    heading(f"an API key and a webhook endpoint for org {DEMO_ORG}; the webhook dispatcher")
    product = demo_product.start(stack, DEMO_ORG, logs)
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

    row = wait_for_row(settings, DEMO_ORG, msg["Message-ID"], ("STORED", "PARSED"))
    heading("inbound_message row")
    show(pick(row, ROW_FIELDS))

    heading("raw MIME in S3")
    s3 = make_client(settings)
    raw = s3.get_object(Bucket=settings.s3_bucket, Key=row["raw_storage_key"])["Body"].read()
    print(f"s3://{settings.s3_bucket}/{row['raw_storage_key']}  ({len(raw)} bytes)")
    stamped = BytesHeaderParser().parsebytes(raw).get_all("Authentication-Results") or []
    for header in stamped:
        print("Authentication-Results: " + " ".join(str(header).split()))

    heading("the RQ job the delivery service queued")
    redis = make_redis(settings)
    job = fetch_job(redis, attachment_job_id(row["id"]))
    status = job.get_status()
    print(f"{job.id}: {job.func_name}{job.args}  queue={job.origin}  status={status.value}")

    worker_log = stack.component_log("worker")
    heading(f"the stack's worker extracts the attachments (log: {worker_log})")
    parsed = wait_for_row(settings, DEMO_ORG, msg["Message-ID"], ("PARSED", "FAILED"))
    with connect(settings.database_url) as conn:
        found = documents.documents_for_message(conn, row["id"])
    print(f"inbound_message {parsed['id']} is {parsed['status']}")
    for document in found:
        show({**pick(document, DOCUMENT_FIELDS), "storage_key": document["storage_key"]})
    heading("hand-off to the extraction pipeline")
    for document in found:
        extract = fetch_job(redis, document_job_id(document["id"]))
        print(f"{extract.id}: {extract.func_name}{extract.args}  queue={extract.origin}")

    demo_product.show(product, parsed, heading)

    cli = f"{sys.prefix}/bin/orderflow-ingest"
    heading(f"the web inbox: {DEMO_USER} is admin of {DEMO_ORG}")
    link = demo_product.sign_in_link(stack, DEMO_USER, DEMO_ORG)
    print(f"  inbox:        {stack.inbox_url}/o/{DEMO_ORG}")
    print(f"  sign in:      {link}")
    minutes = settings.inbox_link_ttl // 60
    print(f"                (single use, valid {minutes} minutes: open it, press Sign in)")
    print(f"  another link: {cli} user link {DEMO_USER} --config {stack.config_path}")
    print(f"  then search:  filename:{DEMO_PDF}")
    print(f"  API:          {stack.api_url}/v1 (docs/api.md)")

    heading("the stack keeps running, the API and the web inbox with it")
    print("(the demo's webhook dispatcher and receiver stop now)")
    print(f'  eval "$({cli} dev env --dir {base_dir})"')
    print(f"  {cli} dev down --dir {base_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
