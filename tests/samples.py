"""Real-looking order mail for the tests: a minimal valid PDF and the messages around it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from orderflow_ingest.devstack.demo import minimal_pdf

INGEST_DOMAIN = "orderflow.test"
__all__ = ["INGEST_DOMAIN", "address", "minimal_pdf", "order_email"]


def address(slug: str, domain: str = INGEST_DOMAIN) -> str:
    return f"orders+{slug}@{domain}"


def order_email(
    to: str = address("acme"),
    sender: str = "buyer@customer.example",
    subject: str | None = None,
    message_id: str | None = "auto",
    attachments: list[tuple[str, str, bytes]] | None = None,
    body: str = "Please find our purchase order attached.\n",
) -> EmailMessage:
    """An order email; attachments are (filename, mime type, bytes); default one PDF."""
    msg = EmailMessage()
    msg["From"] = f"Buyer <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject or f"PO {uuid.uuid4().hex[:8]}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    if message_id == "auto":
        msg["Message-ID"] = make_msgid(domain="customer.example")
    elif message_id is not None:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    if attachments is None:
        attachments = [("PO-4711.pdf", "application/pdf", minimal_pdf())]
    for filename, mime_type, data in attachments:
        maintype, subtype = mime_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg
